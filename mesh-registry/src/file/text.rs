//! Wording of problems: parser errors, quoting, and the checks on names
//! shared by every section of the file.

use super::Problem;
use serde_saphyr::{Location, MessageFormatter};

/// Longest DNS label.
pub(super) const MAX_LABEL_LEN: usize = 63;
/// Longest user value quoted back in a message.
const MAX_QUOTED_CHARS: usize = 64;

/// One problem for a syntax or type error, at the parser's location, worded
/// for someone editing the file.
pub(super) fn parser_problem(err: &serde_saphyr::Error, text: &str) -> Problem {
    use serde_saphyr::Error as E;
    let location = err.location();
    let (line, column) = location.map_or((1, 1), |l| (to_u32(l.line()), to_u32(l.column())));
    let token = location.and_then(|l| token_at(text, l));
    let message = match innermost(err) {
        E::InvalidScalar { ty, .. } if is_integer_type(ty) => match token {
            Some(t) if !is_null(t) => format!("expected a whole number, found {}", quote(t)),
            _ => "expected a whole number here, found nothing".to_string(),
        },
        E::InvalidScalar { ty: "f32" | "f64" | "floating point", .. } => match token {
            Some(t) if !is_null(t) => format!("expected a number, found {}", quote(t)),
            _ => "expected a number here, found nothing".to_string(),
        },
        E::InvalidScalar { ty: "bool", .. } => match token {
            Some(t) if !is_null(t) => format!("expected true or false, found {}", quote(t)),
            _ => "expected true or false here, found nothing".to_string(),
        },
        E::Unexpected { expected: "string scalar", .. } => match token.and_then(|t| t.chars().next()) {
            Some('[') => "expected a single value, found a list: quote values that start \
                              with '[', as in address: \"[::1]:4243\""
                .to_string(),
            Some('{') => "expected a single value, found a mapping".to_string(),
            _ => "expected a single value here".to_string(),
        },
        E::Unexpected { expected: "sequence start", .. } => {
            "expected a list here (`- item` lines, or [a, b])".to_string()
        }
        E::Unexpected { expected: "mapping start", .. } => "expected a mapping of `key: value` pairs here".to_string(),
        E::SerdeUnknownField { field, expected, .. } => {
            format!("unknown field {}, expected one of {}", quote(field), expected.join(", "))
        }
        E::SerdeMissingField { field, .. } => format!("missing required field {}", quote(field)),
        E::DuplicateMappingKey { key: Some(key), .. } => {
            format!("duplicate key {}: keep only one", quote(key))
        }
        E::NullIntoString { .. } => "expected a value here, found nothing".to_string(),
        E::MultipleDocuments { .. } => "the file holds more than one YAML document: remove the \
                                        `---` separators and list every service under one \
                                        `services:`"
            .to_string(),
        other => serde_saphyr::UserMessageFormatter.format_message(other).into_owned(),
    };
    Problem { at: crate::problem::Location::Text { line, column }, message: escape_controls(&message) }
}

/// The error itself, without snippet or alias wrappers.
fn innermost(err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match err {
        serde_saphyr::Error::WithSnippet { error, .. } | serde_saphyr::Error::AliasError { error, .. } => {
            innermost(error)
        }
        other => other,
    }
}

/// The source text a location spans, when the parser knows its byte range.
fn token_at(text: &str, location: Location) -> Option<&str> {
    let span = location.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    text.get(start..start.checked_add(len)?)
}

fn is_integer_type(ty: &str) -> bool {
    matches!(ty, "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128")
}

fn is_null(token: &str) -> bool {
    matches!(token.trim(), "" | "~" | "null" | "Null" | "NULL")
}

pub(super) fn dns_label_error(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("it is empty".to_string());
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Some(if c.is_ascii_uppercase() {
            format!("it contains the uppercase letter {c:?}")
        } else {
            format!("it contains {c:?}")
        });
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Some("it starts or ends with '-'".to_string());
    }
    if value.len() > MAX_LABEL_LEN {
        return Some(format!("it is {} characters long", value.len()));
    }
    None
}

/// A specific reason why `text` is not an `ip:port`.
/// A user value for a message: quoted, escaped, and cut short when long.
pub(super) fn quote(value: &str) -> String {
    if value.chars().count() <= MAX_QUOTED_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(MAX_QUOTED_CHARS).collect();
    format!("{head:?}...")
}

/// Escapes control characters so that one problem stays on one line.
pub(super) fn escape_controls(message: &str) -> String {
    if !message.chars().any(char::is_control) {
        return message.to_string();
    }
    message.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

pub(super) fn to_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}
