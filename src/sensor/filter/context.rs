//! Argo `context` filters: every non-empty field of the filter must equal the
//! event's CloudEvents attribute (`type`, `subject`, `source`,
//! `dataContentType`). `id`, `specversion` and `time` are ignored, as in
//! Argo. Never an error: a context always exists.

use crate::config::sensor::ContextFilter as ContextConfig;
use crate::event::EventContext;

/// A dependency's `context` filter: the attributes that must match.
#[derive(Debug)]
pub struct ContextFilter {
    kind: Option<String>,
    subject: Option<String>,
    source: Option<String>,
    data_content_type: Option<String>,
}

impl ContextFilter {
    pub fn new(config: &ContextConfig) -> Self {
        let wanted = |field: &Option<crate::config::Spanned<String>>| {
            field
                .as_ref()
                .map(|f| f.value.clone())
                .filter(|v| !v.is_empty())
        };
        ContextFilter {
            kind: wanted(&config.kind),
            subject: wanted(&config.subject),
            source: wanted(&config.source),
            data_content_type: wanted(&config.data_content_type),
        }
    }

    /// Whether `context` has every attribute this filter names.
    pub fn matches(&self, context: &EventContext) -> bool {
        let ok =
            |wanted: &Option<String>, actual: &str| wanted.as_deref().is_none_or(|w| w == actual);
        ok(&self.kind, &context.kind)
            && ok(&self.subject, &context.subject)
            && ok(&self.source, &context.source)
            && ok(&self.data_content_type, &context.datacontenttype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::Pos;
    use crate::config::Spanned;

    fn some(v: &str) -> Option<Spanned<String>> {
        Some(Spanned::new(v.to_string(), Pos::default()))
    }

    #[test]
    fn table() {
        let event = crate::event::Event::new("shop", "webhook", "orders", bytes::Bytes::new());
        let cases = [
            (ContextConfig::default(), true),
            (
                ContextConfig {
                    kind: some("webhook"),
                    ..Default::default()
                },
                true,
            ),
            (
                ContextConfig {
                    kind: some("calendar"),
                    ..Default::default()
                },
                false,
            ),
            (
                ContextConfig {
                    source: some("shop"),
                    subject: some("orders"),
                    ..Default::default()
                },
                true,
            ),
            (
                ContextConfig {
                    source: some("shop"),
                    subject: some("refunds"),
                    ..Default::default()
                },
                false,
            ),
            (
                ContextConfig {
                    data_content_type: some("application/json"),
                    ..Default::default()
                },
                true,
            ),
            (
                ContextConfig {
                    data_content_type: some("text/plain"),
                    ..Default::default()
                },
                false,
            ),
            // Empty means "any", and `id` is ignored, as in Argo.
            (
                ContextConfig {
                    kind: some(""),
                    id: some("other"),
                    ..Default::default()
                },
                true,
            ),
        ];
        for (i, (config, expected)) in cases.iter().enumerate() {
            assert_eq!(
                ContextFilter::new(config).matches(&event.context),
                *expected,
                "case {i}"
            );
        }
    }
}
