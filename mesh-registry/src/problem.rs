//! Problems a source finds in what it reads, located in the source's own
//! terms, so one model and one set of checks serve every source.

use std::fmt;

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A position in a text file (the YAML registry), both 1-based.
    Text {
        /// Line.
        line: u32,
        /// Column.
        column: u32,
    },
    /// A field of an API object (Kubernetes): `HTTPRoute default/books spec.rules[0].backendRefs`.
    Object {
        /// The object's kind.
        kind: String,
        /// Its namespace (empty for cluster-scoped objects).
        namespace: String,
        /// Its name.
        name: String,
        /// The field path within it (empty for the object as a whole).
        field: String,
    },
}

impl Location {
    /// The line and column of a text location.
    pub fn text_position(&self) -> Option<(u32, u32)> {
        match self {
            Location::Text { line, column } => Some((*line, *column)),
            Location::Object { .. } => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Text { line, column } => write!(f, "{line}:{column}"),
            Location::Object { kind, namespace, name, field } => {
                write!(f, "{kind} ")?;
                if !namespace.is_empty() {
                    write!(f, "{namespace}/")?;
                }
                write!(f, "{name}")?;
                if !field.is_empty() {
                    write!(f, " {field}")?;
                }
                Ok(())
            }
        }
    }
}

/// One problem: where, and what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where.
    pub at: Location,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_read_as_users_expect() {
        let text = Problem { at: Location::Text { line: 3, column: 7 }, message: "bad".into() };
        assert_eq!(text.to_string(), "3:7: bad");
        let object = Location::Object {
            kind: "HTTPRoute".into(),
            namespace: "default".into(),
            name: "books".into(),
            field: "spec.rules[0]".into(),
        };
        assert_eq!(object.to_string(), "HTTPRoute default/books spec.rules[0]");
        assert_eq!(object.text_position(), None);
    }
}
