//! Per-event cost of Argo `data` filters and path lookups on parsed event
//! data (the JSON parse before them is the same for every filter and not
//! measured here).
//!
//! Run: `cargo bench --bench data_filter`. Goal (issue 12): a plain dotted
//! path costs no more with gjson paths than with the old dotted walker.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};
use spillway::config::sensor::{Comparator, DataFilter, JsonType, LogicalOperator};
use spillway::config::yaml::Pos;
use spillway::config::Spanned;
use spillway::json_path;
use spillway::sensor::filter::data::DataFilters;
use std::hint::black_box;

/// A webhook event as a sensor sees it: headers and a JSON order body.
fn event() -> Value {
    json!({
        "header": {"Content-Type": ["application/json"], "X-Request-Id": ["7f3c"]},
        "body": {
            "type": "order",
            "order": {
                "id": "o-10042",
                "total": 129.5,
                "currency": "EUR",
                "customer": {"id": "c-77", "tier": "gold"},
                "items": [
                    {"sku": "a-1", "qty": 1, "price": 19.5},
                    {"sku": "b-2", "qty": 2, "price": 55.0}
                ]
            }
        }
    })
}

fn filter(path: &str, kind: JsonType, value: &str, comparator: Comparator) -> DataFilter {
    let at = Pos::default();
    DataFilter {
        path: Spanned::new(path.to_string(), at),
        kind: Spanned::new(kind, at),
        value: Spanned::new(vec![Spanned::new(value.to_string(), at)], at),
        comparator: Some(Spanned::new(comparator, at)),
        template: None,
    }
}

fn data_filters(c: &mut Criterion) {
    let data = event();
    let cases = [
        (
            "number_plain_path",
            filter(
                "body.order.total",
                JsonType::Number,
                "100",
                Comparator::Greater,
            ),
        ),
        (
            "string_plain_path",
            filter(
                "body.order.customer.tier",
                JsonType::String,
                "gold",
                Comparator::Equal,
            ),
        ),
    ];
    for (name, f) in cases {
        let compiled = DataFilters::compile(std::slice::from_ref(&f), LogicalOperator::And)
            .unwrap_or_else(|p| panic!("{name}: {p:?}"));
        assert_eq!(compiled.evaluate(&data).ok(), Some(true), "{name}");
        c.bench_function(&format!("data_filter/{name}"), |b| {
            b.iter(|| black_box(compiled.evaluate(black_box(&data))))
        });
    }
}

fn path_lookups(c: &mut Criterion) {
    let data = event();
    c.bench_function("json_path_get/plain", |b| {
        b.iter(|| black_box(json_path::get(black_box(&data), "body.order.customer.tier").is_some()))
    });
    // What a text-based gjson (the `gjson` crate) would need first on every
    // event: the parsed (and possibly transformed) data back as JSON text.
    c.bench_function("serialize_event_to_text", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&data)).map(|v| v.len())))
    });
    let parsed = [
        ("each", "body.order.items.#.sku"),
        ("query", "body.order.items.#(qty>1).sku"),
        ("plain", "body.order.customer.tier"),
    ];
    for (name, text) in parsed {
        let path = json_path::Path::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(path.get(&data).is_some(), "{text}");
        c.bench_function(&format!("json_path_parsed/{name}"), |b| {
            b.iter(|| black_box(path.get(black_box(&data)).is_some()))
        });
    }
}

criterion_group!(benches, data_filters, path_lookups);
criterion_main!(benches);
