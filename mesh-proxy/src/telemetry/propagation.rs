//! Trace context propagation: W3C `traceparent`/`tracestate` and B3 (single
//! `b3` header or the multi-header `X-B3-*` form). The proxy joins the app's
//! trace as a child span and passes the trace on in the format it came in.

use http::{HeaderMap, HeaderValue};

/// A position in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The span.
    pub span_id: [u8; 8],
    /// Whether the trace is recorded.
    pub sampled: bool,
}

/// Which header format a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `traceparent`.
    W3c,
    /// `b3: trace-span-sampled[-parent]`.
    B3Single,
    /// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`.
    B3Multi,
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex of bytes.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// B3 trace ids may be 64-bit; they are left-padded to 128.
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => hex::<16>(s),
        16 => {
            let low = hex::<8>(s)?;
            let mut t = [0u8; 16];
            t[8..].copy_from_slice(&low);
            Some(t)
        }
        _ => None,
    }
}

fn valid(ctx: SpanContext) -> Option<SpanContext> {
    (ctx.trace_id != [0; 16] && ctx.span_id != [0; 8]).then_some(ctx)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)?.to_str().ok().map(str::trim)
}

/// Reads the incoming trace context, if the request carries a valid one.
pub fn extract(h: &HeaderMap) -> Option<(SpanContext, Format)> {
    if let Some(tp) = header(h, "traceparent") {
        let parts: Vec<&str> = tp.split('-').collect();
        if let [version, trace, span, flags, ..] = parts.as_slice()
            && *version != "ff"
            && version.len() == 2
        {
            let ctx = SpanContext {
                trace_id: hex::<16>(trace)?,
                span_id: hex::<8>(span)?,
                sampled: hex::<1>(flags)?[0] & 1 == 1,
            };
            return valid(ctx).map(|c| (c, Format::W3c));
        }
        return None;
    }
    if let Some(b3) = header(h, "b3") {
        let parts: Vec<&str> = b3.split('-').collect();
        if let [trace, span, rest @ ..] = parts.as_slice() {
            let sampled = matches!(rest.first(), Some(&"1") | Some(&"d") | None);
            let ctx = SpanContext { trace_id: b3_trace_id(trace)?, span_id: hex::<8>(span)?, sampled };
            return valid(ctx).map(|c| (c, Format::B3Single));
        }
        return None;
    }
    let trace = header(h, "x-b3-traceid")?;
    let span = header(h, "x-b3-spanid")?;
    let sampled =
        header(h, "x-b3-sampled").is_none_or(|s| s == "1" || s == "true") || header(h, "x-b3-flags") == Some("1");
    let ctx = SpanContext { trace_id: b3_trace_id(trace)?, span_id: hex::<8>(span)?, sampled };
    valid(ctx).map(|c| (c, Format::B3Multi))
}

/// Writes `ctx` (the proxy's span) into the request, in `format`;
/// `tracestate` is left as the app set it.
pub fn inject(h: &mut HeaderMap, ctx: &SpanContext, parent: Option<[u8; 8]>, format: Format) {
    let trace = to_hex(&ctx.trace_id);
    let span = to_hex(&ctx.span_id);
    let sampled = if ctx.sampled { "1" } else { "0" };
    let set = |h: &mut HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    match format {
        Format::W3c => set(h, "traceparent", format!("00-{trace}-{span}-0{sampled}")),
        Format::B3Single => {
            let parent = parent.map(|p| format!("-{}", to_hex(&p))).unwrap_or_default();
            set(h, "b3", format!("{trace}-{span}-{sampled}{parent}"));
        }
        Format::B3Multi => {
            set(h, "x-b3-traceid", trace);
            set(h, "x-b3-spanid", span);
            set(h, "x-b3-sampled", sampled.to_string());
            match parent {
                Some(p) => set(h, "x-b3-parentspanid", to_hex(&p)),
                None => {
                    h.remove("x-b3-parentspanid");
                }
            }
        }
    }
}

/// Trace-id ratio sampling, deterministic per trace (as OpenTelemetry's
/// TraceIdRatioBased): every proxy on the path decides alike.
pub fn sample(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < ratio * (u64::MAX >> 1) as f64
}

/// A fresh random id.
pub fn random_id<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    loop {
        for x in b.iter_mut() {
            *x = fastrand::u8(..);
        }
        if b.iter().any(|x| *x != 0) {
            return b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn w3c_round_trip() {
        let h = map(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]);
        let (ctx, f) = extract(&h).expect("valid");
        assert_eq!((f, ctx.sampled), (Format::W3c, true));
        assert_eq!(to_hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut out = h.clone();
        let child = SpanContext { span_id: [1, 2, 3, 4, 5, 6, 7, 8], ..ctx };
        inject(&mut out, &child, Some(ctx.span_id), f);
        assert_eq!(out["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01");
    }

    #[test]
    fn b3_forms() {
        let (ctx, f) = extract(&map(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]))
            .expect("single");
        assert_eq!((f, ctx.sampled), (Format::B3Single, true));
        let (ctx, f) = extract(&map(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ]))
        .expect("multi");
        assert_eq!((f, ctx.sampled), (Format::B3Multi, false));
        assert_eq!(&ctx.trace_id[..8], &[0; 8], "64-bit ids are padded");
        let mut h = HeaderMap::new();
        inject(&mut h, &ctx, Some([9; 8]), Format::B3Multi);
        assert_eq!(h["x-b3-parentspanid"], "0909090909090909");
    }

    #[test]
    fn garbage_is_ignored() {
        for tp in [
            "",
            "00-xyz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(extract(&map(&[("traceparent", tp)])).is_none(), "{tp}");
        }
        assert!(extract(&map(&[("b3", "0")])).is_none(), "a bare deny-sampling b3 carries no context");
    }

    #[test]
    fn ratio_sampling_is_deterministic_and_proportional() {
        let ids: Vec<[u8; 16]> = (0..10_000).map(|_| random_id()).collect();
        let share = ids.iter().filter(|t| sample(t, 0.25)).count() as f64 / ids.len() as f64;
        assert!((share - 0.25).abs() < 0.03, "{share}");
        assert!(ids.iter().all(|t| sample(t, 0.25) == sample(t, 0.25)));
        assert!(ids.iter().all(|t| sample(t, 1.0)) && !ids.iter().any(|t| sample(t, 0.0)));
    }
}
