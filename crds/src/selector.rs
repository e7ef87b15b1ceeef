//! Kubernetes label selectors, evaluated purely (matchLabels AND matchExpressions).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::{BTreeMap, BTreeSet};

/// A validated label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Why a selector cannot be used; the message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorProblem {
    /// The operator is not one Kubernetes defines.
    #[error("unknown operator {operator:?} for key {key:?} (expected In, NotIn, Exists or DoesNotExist)")]
    UnknownOperator {
        /// Label key.
        key: String,
        /// The operator given.
        operator: String,
    },
    /// In/NotIn need values; Exists/DoesNotExist must have none.
    #[error("operator {operator} for key {key:?} {expectation}")]
    Values {
        /// Label key.
        key: String,
        /// The operator given.
        operator: String,
        /// What was expected of the values.
        expectation: &'static str,
    },
}

impl Selector {
    /// Validates a Kubernetes `LabelSelector`. An empty selector matches everything.
    pub fn parse(selector: &LabelSelector) -> Result<Self, SelectorProblem> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In(key.clone(), BTreeSet::from([value.clone()])));
        }
        for expr in selector.match_expressions.iter().flatten() {
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let key = expr.key.clone();
            let need_values = |values: BTreeSet<String>| {
                if values.is_empty() {
                    Err(SelectorProblem::Values {
                        key: key.clone(),
                        operator: expr.operator.clone(),
                        expectation: "needs at least one value",
                    })
                } else {
                    Ok(values)
                }
            };
            let no_values = || {
                if values.is_empty() {
                    Ok(())
                } else {
                    Err(SelectorProblem::Values {
                        key: key.clone(),
                        operator: expr.operator.clone(),
                        expectation: "must not list values",
                    })
                }
            };
            let requirement = match expr.operator.as_str() {
                "In" => Requirement::In(key.clone(), need_values(values.clone())?),
                "NotIn" => Requirement::NotIn(key.clone(), need_values(values.clone())?),
                "Exists" => no_values().map(|()| Requirement::Exists(key.clone()))?,
                "DoesNotExist" => no_values().map(|()| Requirement::DoesNotExist(key.clone()))?,
                other => {
                    return Err(SelectorProblem::UnknownOperator { key, operator: other.to_string() });
                }
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_labels: None,
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::parse(&LabelSelector::default()).expect("valid");
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let mut sel = expr("tier", "NotIn", &["dev"]);
        sel.match_labels = Some(labels(&[("app", "web")]));
        let s = Selector::parse(&sel).expect("valid");
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "dev")])));
        assert!(!s.matches(&labels(&[("tier", "prod")])));
    }

    #[test]
    fn every_operator() {
        let is = |sel: LabelSelector, l: &[(&str, &str)]| Selector::parse(&sel).expect("valid").matches(&labels(l));
        assert!(is(expr("k", "In", &["a", "b"]), &[("k", "b")]));
        assert!(!is(expr("k", "In", &["a"]), &[]));
        assert!(is(expr("k", "Exists", &[]), &[("k", "")]));
        assert!(!is(expr("k", "Exists", &[]), &[]));
        assert!(is(expr("k", "DoesNotExist", &[]), &[("j", "x")]));
        assert!(!is(expr("k", "DoesNotExist", &[]), &[("k", "x")]));
    }

    #[test]
    fn malformed_selectors_are_refused_with_the_reason() {
        let err = Selector::parse(&expr("k", "Equals", &["a"])).expect_err("bad operator");
        assert!(err.to_string().contains("unknown operator \"Equals\""), "{err}");
        let err = Selector::parse(&expr("k", "In", &[])).expect_err("In without values");
        assert!(err.to_string().contains("needs at least one value"), "{err}");
        let err = Selector::parse(&expr("k", "Exists", &["x"])).expect_err("Exists with values");
        assert!(err.to_string().contains("must not list values"), "{err}");
    }
}
