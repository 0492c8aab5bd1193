//! The YAML an operator writes or a job reads back (the clients file, the sync mappings, the
//! Secret manifests of the manifest target), read in one way: serde-saphyr, a YAML parser in
//! pure Rust (no libyaml), with errors an operator can act on.

use serde::de::DeserializeOwned;

/// Parses one YAML document into `T`.
///
/// A key given twice in one mapping is refused (serde-saphyr's default, as YAML 1.2 requires).
/// The error is one line, the problem and where (`line 4, column 5`), in the wording meant for
/// users rather than for the program's developers, and without the excerpt of the input that a
/// terminal would show: it ends up in a Job's log. The node budget admits a clients file of
/// 200,000 clients, where the parser's default (250,000 nodes) stops near 50,000; its limits
/// on aliases, anchors and nesting stay.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 1_000_000;
    budget.max_events = 2_000_000;
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options.budget = Some(budget);
    serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| e.render_with_formatter(&serde_saphyr::UserMessageFormatter))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use super::from_str;

    #[test]
    fn a_document_is_read() {
        let map: BTreeMap<String, Vec<u32>> = from_str("a: [1, 2]\nb:\n  - 3\n").unwrap();
        assert_eq!(map["a"], [1, 2]);
        assert_eq!(map["b"], [3]);
    }

    #[test]
    fn a_key_given_twice_is_refused_naming_it_and_where() {
        let err = from_str::<BTreeMap<String, u32>>("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(
            err,
            "duplicate mapping key `a` is not allowed here at line 3, column 1"
        );
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        // Each level refers to the one before nine times: 9^9 nodes once expanded.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            let refs = [prev.as_str(); 9].join(", ");
            let _ = writeln!(text, "a{i}: &a{i} [{refs}]");
        }
        let err = from_str::<serde_json::Value>(&text).unwrap_err();
        assert!(
            err.starts_with("YAML document too large or too complex: limits breached"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_value_names_its_place() {
        let err = from_str::<BTreeMap<String, u8>>("a: 1\nb: 300\n").unwrap_err();
        assert_eq!(err, "invalid u8 at line 2, column 4");
    }
}
