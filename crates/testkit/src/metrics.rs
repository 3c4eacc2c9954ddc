//! Reading a `/metrics` page (OpenMetrics text) for the golden tests of metric names.

use std::collections::BTreeSet;

/// `name{label,…}` of every series in `text` (label keys in their order, values left out),
/// and `name type` of every family (its `# TYPE` line): what a dashboard depends on.
pub fn shapes(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut series = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            families.insert(family.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (name, labels) = line.split_once('{').unwrap_or((line, ""));
            let name = name.split(' ').next().unwrap_or_default();
            let keys: Vec<&str> = labels
                .split(',')
                .filter_map(|pair| pair.split_once('=').map(|(key, _)| key))
                .collect();
            series.insert(format!("{name}{{{}}}", keys.join(",")));
        }
    }
    (series, families)
}

#[cfg(test)]
mod tests {
    use super::shapes;

    #[test]
    fn names_labels_and_types() {
        let text = "# HELP a_total A.\n# TYPE a counter\na_total{x=\"1\",y=\"2\"} 3\n\
                    b 4\n# EOF\n";
        let (series, families) = shapes(text);
        assert_eq!(
            series.into_iter().collect::<Vec<_>>(),
            ["a_total{x,y}", "b{}"]
        );
        assert_eq!(families.into_iter().collect::<Vec<_>>(), ["a counter"]);
    }
}
