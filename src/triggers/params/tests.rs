//! Parameter resolution and placement, table-driven against Argo's rules.

use super::*;
use crate::config::diagnostic::Diagnostics;
use serde_json::json;

/// Decodes the YAML of one `TriggerParameter` through the config decoder.
fn parameter(yaml: &str) -> TriggerParameter {
    let docs = crate::config::yaml::parse_documents(yaml).expect("YAML parses");
    let diags = Diagnostics::default();
    crate::config::decode::decode::<TriggerParameter>(&docs[0], &diags)
        .unwrap_or_else(|e| panic!("parameter decodes: {}", e.message))
}

fn event(data: Value) -> Event {
    Event::new(
        "shop",
        "webhook",
        "orders",
        bytes::Bytes::from(data.to_string()),
    )
}

#[test]
fn resolves_like_argo() {
    let data = json!({
        "header": {"X-Id": ["h-1"]},
        "body": {"name": "ada", "total": 12, "price": 1.5, "big": 1e3, "paid": true, "none": null,
                 "items": [{"sku": "a"}], "blank": ""}
    });
    let cases: &[(&str, Result<Value, &str>)] = &[
        ("{src: {dependencyName: d, dataKey: body.name}, dest: x}", Ok(json!("ada"))),
        // Argo stringifies every key value (gjson's text) …
        ("{src: {dependencyName: d, dataKey: body.total}, dest: x}", Ok(json!("12"))),
        ("{src: {dependencyName: d, dataKey: body.price}, dest: x}", Ok(json!("1.5"))),
        ("{src: {dependencyName: d, dataKey: body.big}, dest: x}", Ok(json!("1000"))),
        ("{src: {dependencyName: d, dataKey: body.paid}, dest: x}", Ok(json!("true"))),
        ("{src: {dependencyName: d, dataKey: body.none}, dest: x}", Ok(json!("null"))),
        ("{src: {dependencyName: d, dataKey: body.items}, dest: x}", Ok(json!(r#"[{"sku":"a"}]"#))),
        ("{src: {dependencyName: d, dataKey: body.items.0.sku}, dest: x}", Ok(json!("a"))),
        ("{src: {dependencyName: d, dataKey: body.blank}, dest: x}", Ok(json!(""))),
        // … unless useRawData: then a non-string keeps its JSON type.
        ("{src: {dependencyName: d, dataKey: body.total, useRawData: true}, dest: x}", Ok(json!(12))),
        ("{src: {dependencyName: d, dataKey: body.price, useRawData: true}, dest: x}", Ok(json!(1.5))),
        ("{src: {dependencyName: d, dataKey: body.paid, useRawData: true}, dest: x}", Ok(json!(true))),
        ("{src: {dependencyName: d, dataKey: body.none, useRawData: true}, dest: x}", Ok(json!(null))),
        ("{src: {dependencyName: d, dataKey: body.items, useRawData: true}, dest: x}", Ok(json!([{"sku": "a"}]))),
        ("{src: {dependencyName: d, dataKey: body.name, useRawData: true}, dest: x}", Ok(json!("ada"))),
        ("{src: {dependencyName: d, dataKey: body.items, useRawData: false}, dest: x}", Ok(json!(r#"[{"sku":"a"}]"#))),
        // Templates and defaults are text even with useRawData.
        ("{src: {dependencyName: d, dataTemplate: '{{ .Input.body.total }}', useRawData: true}, dest: x}", Ok(json!("12"))),
        ("{src: {dependencyName: d, dataKey: body.nope, value: '7', useRawData: true}, dest: x}", Ok(json!("7"))),
        ("{src: {dependencyName: d, contextKey: source}, dest: x}", Ok(json!("shop"))),
        ("{src: {dependencyName: d, contextKey: type}, dest: x}", Ok(json!("webhook"))),
        ("{src: {dependencyName: d, contextKey: subject}, dest: x}", Ok(json!("orders"))),
        // Missing key: the default, else an error.
        ("{src: {dependencyName: d, dataKey: body.nope, value: dflt}, dest: x}", Ok(json!("dflt"))),
        ("{src: {dependencyName: d, dataKey: body.nope}, dest: x}", Err("dataKey \"body.nope\" is not in the event data")),
        ("{src: {dependencyName: d, contextKey: nope}, dest: x}", Err("contextKey \"nope\" is not in the event context")),
        // Templates: `.Input` is the data (or the context); always strings.
        ("{src: {dependencyName: d, dataTemplate: '{{ .Input.body.name | upper }}'}, dest: x}", Ok(json!("ADA"))),
        ("{src: {dependencyName: d, dataTemplate: '{{ .Input.body.total }}'}, dest: x}", Ok(json!("12"))),
        ("{src: {dependencyName: d, contextTemplate: '{{ .Input.source }}/{{ .Input.subject }}'}, dest: x}", Ok(json!("shop/orders"))),
        // A template wins over the key when both are set …
        ("{src: {dependencyName: d, dataKey: body.name, dataTemplate: 'n={{ .Input.body.name }}'}, dest: x}", Ok(json!("n=ada"))),
        // … and falls back to it, then to the default, when it renders nothing.
        ("{src: {dependencyName: d, dataKey: body.name, dataTemplate: '{{ .Input.body.nope }}'}, dest: x}", Ok(json!("ada"))),
        ("{src: {dependencyName: d, dataTemplate: '{{ .Input.body.blank }}', value: v}, dest: x}", Ok(json!("v"))),
        ("{src: {dependencyName: d, dataTemplate: '{{ .Input.body.nope }}'}, dest: x}", Err("template evaluated to an empty string")),
        // Data wins over context when both are set (Argo).
        ("{src: {dependencyName: d, contextKey: source, dataKey: body.name}, dest: x}", Ok(json!("ada"))),
        // Only a value: the value.
        ("{src: {dependencyName: d, value: fixed}, dest: x}", Ok(json!("fixed"))),
    ];
    let event = event(data.clone());
    for (yaml, want) in cases {
        let got = resolve(&parameter(yaml), &event, &data);
        match (want, got) {
            (Ok(want), Ok(got)) => assert_eq!(&got, want, "{yaml}"),
            (Err(want), Err(got)) => {
                assert!(got.to_string().contains(want), "{yaml}: {got}");
                assert_eq!(got.dependency, "d");
                assert_eq!(got.dest, "x");
            }
            (want, got) => panic!("{yaml}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn no_key_and_no_value_is_the_whole_event_as_text() {
    let data = json!({"body": {"a": 1}});
    let event = event(data.clone());
    for yaml in [
        "{src: {dependencyName: d}, dest: x}",
        // Argo inserts the whole event as text even with useRawData.
        "{src: {dependencyName: d, useRawData: true}, dest: x}",
    ] {
        let got = resolve(&parameter(yaml), &event, &data).expect("resolves");
        let text = got.as_str().expect("a string");
        let whole: Value = serde_json::from_str(text).expect("JSON text");
        assert_eq!(whole["data"], data);
        assert_eq!(whole["context"]["id"], json!(event.context.id));
        assert_eq!(whole["context"]["source"], json!("shop"));
    }
}

#[test]
fn malformed_data_uses_the_default_or_fails() {
    let event = Event::new(
        "shop",
        "webhook",
        "orders",
        bytes::Bytes::from_static(b"not json {"),
    );
    let data = event.data_json();
    let with_default =
        parameter("{src: {dependencyName: d, dataKey: body.id, value: none}, dest: x}");
    assert_eq!(resolve(&with_default, &event, &data), Ok(json!("none")));
    let without =
        parameter("{src: {dependencyName: d, dataTemplate: '{{ .Input.body.id }}'}, dest: x}");
    assert!(resolve(&without, &event, &data).is_err());
    // The context is still there for context keys.
    let context = parameter("{src: {dependencyName: d, contextKey: id}, dest: x}");
    assert_eq!(
        resolve(&context, &event, &data),
        Ok(json!(event.context.id))
    );
}

#[test]
fn operations_overwrite_append_prepend() {
    let data = json!({"body": {"name": "ada", "n": 7}});
    let event = event(data);
    let cases = [
        ("overwrite", json!({"spec": {"v": "ada"}})),
        ("append", json!({"spec": {"v": "hello-ada"}})),
        ("prepend", json!({"spec": {"v": "adahello-"}})),
    ];
    for (operation, want) in cases {
        let p = parameter(&format!(
            "{{src: {{dependencyName: d, dataKey: body.name}}, dest: spec.v, operation: {operation}}}"
        ));
        let mut target = json!({"spec": {"v": "hello-"}});
        apply(&[p], |_| Some(&event), &mut target).expect("applies");
        assert_eq!(target, want, "{operation}");
    }
    // Appending to nothing sets the value as is (raw with useRawData);
    // onto anything, even null, the texts join.
    let p = parameter(
        "{src: {dependencyName: d, dataKey: body.n, useRawData: true}, dest: spec.v, operation: append}",
    );
    let cases = [
        (json!({}), json!({"spec": {"v": 7}})),
        (json!({"spec": {"v": 10}}), json!({"spec": {"v": "107"}})),
        (json!({"spec": {"v": null}}), json!({"spec": {"v": "7"}})),
        (
            json!({"spec": {"v": {"a": 1}}}),
            json!({"spec": {"v": r#"{"a":1}7"#}}),
        ),
    ];
    for (mut target, want) in cases {
        apply(std::slice::from_ref(&p), |_| Some(&event), &mut target).expect("applies");
        assert_eq!(target, want);
    }
}

#[test]
fn parameters_into_a_workflow_argument() {
    let event = event(json!({"body": {"order": "o-1"}}));
    let mut workflow = json!({"spec": {"arguments": {"parameters": [{"name": "order", "value": "?"}, {"name": "b"}]}}});
    let parameters = [
        parameter("{src: {dependencyName: d, dataKey: body.order}, dest: spec.arguments.parameters.0.value}"),
        parameter("{src: {dependencyName: d, dataTemplate: 'id-{{ .Input.body.order }}'}, dest: spec.arguments.parameters.1.value}"),
    ];
    apply(&parameters, |_| Some(&event), &mut workflow).expect("applies");
    assert_eq!(
        workflow,
        json!({"spec": {"arguments": {"parameters": [{"name": "order", "value": "o-1"}, {"name": "b", "value": "id-o-1"}]}}})
    );
}

#[test]
fn an_absent_dependency_uses_its_default_or_is_skipped() {
    let parameters = [
        parameter("{src: {dependencyName: other, dataKey: a, value: dflt}, dest: a}"),
        parameter("{src: {dependencyName: other, dataKey: b}, dest: b}"),
    ];
    let mut out = json!({});
    apply(&parameters, |_| None, &mut out).expect("applies");
    assert_eq!(out, json!({"a": "dflt"}));
}

#[test]
fn a_failing_parameter_fails_the_payload() {
    let event = event(json!({"body": {}}));
    let parameters = [parameter(
        "{src: {dependencyName: d, dataKey: body.id}, dest: id}",
    )];
    let err = build_payload_matched(&parameters, &[("d", &event)]).expect_err("missing key");
    assert_eq!(err.dest, "id");
    let parameters = [parameter(
        "{src: {dependencyName: d, dataKey: body, value: x, useRawData: true}, dest: all}",
    )];
    assert_eq!(
        build_payload_matched(&parameters, &[("d", &event)]),
        Ok(json!({"all": {}}))
    );
}

#[test]
fn bad_templates_and_operations_are_decode_errors() {
    let docs = crate::config::yaml::parse_documents(
        "{src: {dependencyName: d, dataTemplate: '{{ .Input.a | nosuchfn }}'}, dest: x}",
    )
    .expect("YAML parses");
    let err = crate::config::decode::decode::<TriggerParameter>(&docs[0], &Diagnostics::default())
        .expect_err("unknown function");
    assert!(err.message.contains("nosuchfn"), "{}", err.message);
    assert!(err.pos.is_some());
    let docs = crate::config::yaml::parse_documents(
        "{src: {dependencyName: d}, dest: x, operation: merge}",
    )
    .expect("YAML parses");
    let err = crate::config::decode::decode::<TriggerParameter>(&docs[0], &Diagnostics::default())
        .expect_err("unknown operation");
    assert!(err.message.contains("append"), "{}", err.message);
}

#[test]
fn payload_body_is_argos_construct_payload() {
    let order = event(json!({"body": {"id": "o-1", "total": 12, "lines": [1, 2]}}));
    let payment = event(json!({"body": {"amount": 12.5}}));
    let matched: &[(&str, &Event)] = &[("order", &order), ("payment", &payment)];
    // Each parameter reads its own dependency's event; values are text.
    let parameters = [
        parameter("{src: {dependencyName: order, dataKey: body.id}, dest: order}"),
        parameter("{src: {dependencyName: payment, dataKey: body.amount}, dest: amount}"),
        parameter(
            "{src: {dependencyName: payment, dataKey: body.amount, useRawData: true}, dest: raw}",
        ),
        parameter("{src: {dependencyName: absent, dataKey: x}, dest: skipped}"),
        parameter("{src: {dependencyName: absent, dataKey: x, value: dflt}, dest: dflt}"),
    ];
    let body: Value =
        serde_json::from_str(&payload_body(&parameters, matched).expect("builds")).expect("JSON");
    assert_eq!(
        body,
        json!({"order": "o-1", "amount": "12.5", "raw": 12.5, "dflt": "dflt"})
    );
    // An empty dest makes the first value found the whole body, as text.
    let whole = [
        parameter("{src: {dependencyName: absent, dataKey: x}, dest: ''}"),
        parameter("{src: {dependencyName: order, dataKey: body.id}, dest: before}"),
        parameter("{src: {dependencyName: order, dataKey: body.lines}, dest: ''}"),
        parameter("{src: {dependencyName: order, dataKey: body.id}, dest: ''}"),
    ];
    assert_eq!(payload_body(&whole, matched).as_deref(), Ok("[1,2]"));
    let text = [parameter(
        "{src: {dependencyName: order, dataTemplate: 'id={{ .Input.body.id }}'}, dest: ''}",
    )];
    assert_eq!(payload_body(&text, matched).as_deref(), Ok("id=o-1"));
    // Nothing at all: an empty object.
    assert_eq!(payload_body(&[], matched).as_deref(), Ok("{}"));
}

#[test]
fn rebase_strips_the_prefix_or_names_the_stray_dest() {
    let parameters = [
        parameter("{src: {dependencyName: d}, dest: http.url}"),
        parameter("{src: {dependencyName: d}, dest: http.headers.X-Id}"),
    ];
    let rebased = rebase(&parameters, &["http."]).expect("all under http.");
    let dests: Vec<&str> = rebased.iter().map(|p| p.dest.value.as_str()).collect();
    assert_eq!(dests, ["url", "headers.X-Id"]);
    let stray = [parameter(
        "{src: {dependencyName: d}, dest: log.intervalSeconds}",
    )];
    assert_eq!(
        rebase(&stray, &["http."]).map(|_| ()),
        Err("log.intervalSeconds".to_string())
    );
}
