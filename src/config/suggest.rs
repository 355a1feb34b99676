//! "Did you mean …?" hints for misspelt names.

/// The candidate closest to `word`, if one is close enough to be a likely typo.
///
/// Case and `-`/`_` differences count as near-misses (`requests_per_unit` →
/// `requestsPerUnit`); otherwise Jaro-Winkler similarity ≥ 0.8 is required.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let folded = fold(word);
    let mut best: Option<(&str, f64)> = None;
    for candidate in candidates {
        let score = if fold(candidate) == folded {
            2.0
        } else {
            strsim::jaro_winkler(&word.to_ascii_lowercase(), &candidate.to_ascii_lowercase())
        };
        if score >= 0.8 && best.is_none_or(|(_, b)| score > b) {
            best = Some((candidate, score));
        }
    }
    best.map(|(c, _)| c)
}

fn fold(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn finds_typos_and_case_variants() {
        let fields = ["requestsPerUnit", "unit"];
        assert_eq!(
            did_you_mean("requestPerUnit", fields),
            Some("requestsPerUnit")
        );
        assert_eq!(
            did_you_mean("requests_per_unit", fields),
            Some("requestsPerUnit")
        );
        assert_eq!(did_you_mean("unti", fields), Some("unit"));
        assert_eq!(did_you_mean("colour", fields), None);
    }
}
