use super::*;
use serde_json::json;

/// The document of gjson's SYNTAX.md, which its examples below refer to.
fn syntax_doc() -> Value {
    json!({
      "name": {"first": "Tom", "last": "Anderson"},
      "age": 37,
      "children": ["Sara", "Alex", "Jack"],
      "fav.movie": "Deer Hunter",
      "friends": [
        {"first": "Dale", "last": "Murphy", "age": 44, "nets": ["ig", "fb", "tw"]},
        {"first": "Roger", "last": "Craig", "age": 68, "nets": ["fb", "tw"]},
        {"first": "Jane", "last": "Murphy", "age": 47, "nets": ["ig", "tw"]}
      ]
    })
}

#[test]
fn gjson_syntax_examples() {
    let doc = syntax_doc();
    let dale = json!({"first": "Dale", "last": "Murphy", "age": 44, "nets": ["ig", "fb", "tw"]});
    // (path, expected; None = does not exist)
    let cases: Vec<(&str, Option<Value>)> = vec![
        ("name.last", Some(json!("Anderson"))),
        ("age", Some(json!(37))),
        ("children", Some(json!(["Sara", "Alex", "Jack"]))),
        ("children.0", Some(json!("Sara"))),
        ("friends.1.first", Some(json!("Roger"))),
        ("child*.2", Some(json!("Jack"))),
        ("c?ildren.0", Some(json!("Sara"))),
        (r"fav\.movie", Some(json!("Deer Hunter"))),
        ("friends.#", Some(json!(3))),
        ("friends.#.age", Some(json!([44, 68, 47]))),
        (r#"friends.#(last=="Murphy").first"#, Some(json!("Dale"))),
        (
            r#"friends.#(last=="Murphy")#.first"#,
            Some(json!(["Dale", "Jane"])),
        ),
        ("friends.#(age>45)#.last", Some(json!(["Craig", "Murphy"]))),
        (r#"friends.#(first%"D*").last"#, Some(json!("Murphy"))),
        (r#"friends.#(first!%"D*").last"#, Some(json!("Craig"))),
        (r#"children.#(!%"*a*")"#, Some(json!("Alex"))),
        (r#"children.#(%"*a*")#"#, Some(json!(["Sara", "Jack"]))),
        (
            r#"friends.#(nets.#(=="fb"))#.first"#,
            Some(json!(["Dale", "Roger"])),
        ),
        ("friends|0.first", Some(json!("Dale"))),
        ("friends.0|first", Some(json!("Dale"))),
        ("friends|#", Some(json!(3))),
        (r#"friends.#(last="Murphy")#|first"#, None),
        (r#"friends.#(last="Murphy")#.0"#, Some(json!([]))),
        (r#"friends.#(last="Murphy")#|0"#, Some(dale)),
        (r#"friends.#(last="Murphy")#|#"#, Some(json!(2))),
        ("children.@reverse", Some(json!(["Jack", "Alex", "Sara"]))),
        ("children.@reverse.0", Some(json!("Jack"))),
        ("children|@reverse|0", Some(json!("Jack"))),
        ("@this.age", Some(json!(37))),
        ("name.@keys", Some(json!(["first", "last"]))),
        ("name.@values", Some(json!(["Tom", "Anderson"]))),
        // `.` after `#` applies to each element, `|` to the array built.
        (
            "friends.#.nets|@flatten",
            Some(json!(["ig", "fb", "tw", "fb", "tw", "ig", "tw"])),
        ),
        (
            "friends.#.nets.@flatten",
            Some(json!([["ig", "fb", "tw"], ["fb", "tw"], ["ig", "tw"]])),
        ),
        ("friends.#.first|1", Some(json!("Roger"))),
        ("name.last.@tostr", Some(json!("\"Anderson\""))),
        (
            r#"{name.first,age,"the_murphys":friends.#(last="Murphy")#.first}"#,
            Some(json!({"first": "Tom", "age": 37, "the_murphys": ["Dale", "Jane"]})),
        ),
        ("[name.first,age,nope]", Some(json!(["Tom", 37]))),
        // Missing things.
        ("name.middle", None),
        ("children.3", None),
        ("children.x", None),
        ("age.#", None),
        (r#"friends.#(last=="Smith").first"#, None),
        (r#"friends.#(last=="Smith")#"#, Some(json!([]))),
        ("nothing*", None),
    ];
    for (path, expected) in cases {
        let parsed = Path::parse(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let got = parsed.get(&doc).map(Cow::into_owned);
        assert_eq!(got, expected, "{path:?}");
        assert_eq!(
            get(&doc, path).map(Cow::into_owned),
            expected,
            "get({path:?})"
        );
    }
}

#[test]
fn tilde_queries_compare_truthiness() {
    let doc = json!({"vals": [
        {"a": 1, "b": true}, {"a": 2, "b": true}, {"a": 3, "b": false}, {"a": 4, "b": "0"},
        {"a": 5, "b": 0}, {"a": 6, "b": "1"}, {"a": 7, "b": 1}, {"a": 8, "b": "true"},
        {"a": 9, "b": false}, {"a": 10, "b": null}, {"a": 11}
    ]});
    let all = |path: &str| {
        Path::parse(path)
            .expect("parses")
            .get(&doc)
            .map(Cow::into_owned)
    };
    assert_eq!(all("vals.#(b==~true)#.a"), Some(json!([1, 2, 6, 7, 8])));
    assert_eq!(
        all("vals.#(b==~false)#.a"),
        Some(json!([3, 4, 5, 9, 10, 11]))
    );
    assert_eq!(all("vals.#(b==~null)#.a"), Some(json!([10, 11])));
    assert_eq!(
        all("vals.#(b==~*)#.a"),
        Some(json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
    );
}

#[test]
fn keys_with_dots_and_argo_style_paths() {
    let doc = json!({"body": {"metadata.name": "web", "metadata": {"name": "other"}},
                     "k": "v", "k1": {"a": [{"k2": "v2"}, {"k2": "v3"}]}});
    let at = |path: &str| get(&doc, path).map(Cow::into_owned);
    assert_eq!(at(r"body.metadata\.name"), Some(json!("web")));
    assert_eq!(at("body.metadata.name"), Some(json!("other")));
    // From Argo's own data filter tests.
    assert_eq!(at(r#"[k,k1.a.#(k2=="v2").k2]"#), Some(json!(["v", "v2"])));
    assert_eq!(
        at(r#"[k,k1.a.#(k2=="v2").k2,,k1.a.#(k2=="v3").k2]"#),
        Some(json!(["v", "v2", "v3"]))
    );
}

#[test]
fn plain_paths_borrow_from_the_data() {
    let doc = syntax_doc();
    let path = Path::parse("friends.1.first").expect("parses");
    assert!(matches!(path.get(&doc), Some(Cow::Borrowed(_))));
    assert!(matches!(
        get(&doc, "friends.1.first"),
        Some(Cow::Borrowed(_))
    ));
}

#[test]
fn unsupported_syntax_is_refused_with_its_position() {
    // (path, byte offset of the problem, part of the message)
    let cases = [
        ("", 0, "empty"),
        ("a..b", 2, "empty key"),
        ("a.", 2, "ends with a separator"),
        ("..a", 0, "JSON-lines"),
        ("a.!true", 2, "literals"),
        ("a.@pretty", 2, "@pretty"),
        ("a.@dig:x", 2, "@dig"),
        ("a.#(b==1", 3, "never closed"),
        ("a.#x", 2, "`#` must be alone"),
        ("a.#(b=)", 6, "no value"),
        ("a.#(b==~maybe)", 4, "~maybe"),
        ("a.@flatten:{\"x\":1}", 11, "not supported"),
        (r"a\", 2, "`\\` at the end"),
        ("[a,b..c]", 5, "empty key"),
    ];
    for (path, offset, message) in cases {
        let err = Path::parse(path).expect_err(path);
        assert_eq!(err.offset, offset, "{path:?}: {err}");
        assert!(err.message.contains(message), "{path:?}: {err}");
    }
}

#[test]
fn unknown_at_names_are_keys() {
    let doc = json!({"@timestamp": "t", "log": {"@level": "info"}});
    assert_eq!(
        get(&doc, "@timestamp").map(Cow::into_owned),
        Some(json!("t"))
    );
    assert_eq!(
        get(&doc, "log.@level").map(Cow::into_owned),
        Some(json!("info"))
    );
}

#[test]
fn set_creates_the_path() {
    let mut v = json!({});
    set(&mut v, "order.id", json!("o-1"));
    set(&mut v, "total", json!(42));
    assert_eq!(v, json!({"order": {"id": "o-1"}, "total": 42}));
}

#[test]
fn set_escapes_dots_in_keys() {
    let mut v = json!({"metadata": {"labels": {}}});
    set(
        &mut v,
        r"metadata.labels.app\.kubernetes\.io/name",
        json!("web"),
    );
    assert_eq!(
        v,
        json!({"metadata": {"labels": {"app.kubernetes.io/name": "web"}}})
    );
}

#[test]
fn set_indexes_existing_arrays() {
    let mut v = json!({"spec": {"arguments": {"parameters": [{"name": "a"}, {"name": "b"}]}}});
    set(&mut v, "spec.arguments.parameters.1.value", json!("x"));
    assert_eq!(
        v,
        json!({"spec": {"arguments": {"parameters": [{"name": "a"}, {"name": "b", "value": "x"}]}}})
    );
    set(&mut v, "spec.arguments.parameters.0", json!("whole"));
    assert_eq!(
        get(&v, "spec.arguments.parameters.0").map(Cow::into_owned),
        Some(json!("whole"))
    );
}
