//! Checks across rules and policies that a registry runs before serving
//! them, as pure functions: the source (file, Kubernetes) only turns their
//! findings into problems located in its own terms (line and column, or
//! object and field path).

use crate::model::RequestMatch;

/// A rule that first-match-wins can never reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    /// The unreachable rule (index into the rules given).
    pub rule: usize,
    /// The earlier rules that together match everything it matches.
    pub by: Vec<usize>,
}

/// The rules of one route policy that can never match: every request a rule
/// matches is matched first by an earlier rule. Each rule is given as its
/// matches; an empty list matches every request. Conservative: a rule is
/// reported only when subsumption is certain ([`RequestMatch::subsumes`]).
pub fn shadowed_rules(rules: &[&[RequestMatch]]) -> Vec<Shadowed> {
    let everything = [RequestMatch::default()];
    let effective =
        |r: &[RequestMatch]| -> Vec<RequestMatch> { if r.is_empty() { everything.to_vec() } else { r.to_vec() } };
    let rules: Vec<Vec<RequestMatch>> = rules.iter().map(|r| effective(r)).collect();
    let mut found = Vec::new();
    for (j, later) in rules.iter().enumerate() {
        let mut by: Vec<usize> = Vec::new();
        let covered = later.iter().all(|m| {
            let earlier = rules[..j].iter().position(|r| r.iter().any(|e| e.subsumes(m)));
            if let Some(i) = earlier
                && !by.contains(&i)
            {
                by.push(i);
            }
            earlier.is_some()
        });
        if covered {
            found.push(Shadowed { rule: j, by });
        }
    }
    found
}

/// Whether two policies selecting ports of the same service overlap
/// (`None` selects every port).
pub fn ports_overlap(a: Option<u16>, b: Option<u16>) -> bool {
    a.is_none() || b.is_none() || a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PathMatch;

    fn prefix(p: &str) -> RequestMatch {
        RequestMatch { path: Some(PathMatch::Prefix(p.into())), ..Default::default() }
    }

    #[test]
    fn later_rules_covered_by_earlier_ones_are_reported() {
        let api = [prefix("/api")];
        let v1 = [prefix("/api/v1")];
        let admin = [prefix("/admin")];
        let both = [prefix("/api/v2"), prefix("/admin/x")];
        let rules: Vec<&[RequestMatch]> = vec![&api, &v1, &admin, &both, &[]];
        assert_eq!(
            shadowed_rules(&rules),
            vec![Shadowed { rule: 1, by: vec![0] }, Shadowed { rule: 3, by: vec![0, 2] }],
            "the catch-all last rule is reachable (/other)"
        );
        let catch_all_first: Vec<&[RequestMatch]> = vec![&[], &api];
        assert_eq!(shadowed_rules(&catch_all_first), vec![Shadowed { rule: 1, by: vec![0] }]);
        assert!(shadowed_rules(&[&api, &admin]).is_empty());
    }

    #[test]
    fn port_overlap() {
        assert!(ports_overlap(None, Some(1)) && ports_overlap(Some(1), None) && ports_overlap(None, None));
        assert!(ports_overlap(Some(1), Some(1)));
        assert!(!ports_overlap(Some(1), Some(2)));
    }
}
