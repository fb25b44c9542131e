//! The registry file (`mesh-registry/src/file`): any bytes are accepted or
//! rejected with problems located inside the text, never a panic; and what
//! is accepted translates into policies the proxy compiles (the control
//! plane validates, so a policy the proxy refuses is a registry bug).

use mesh_policy::inbound::InboundPolicy;
use mesh_policy::outbound::OutboundPolicy;
use mesh_registry::file::{FileError, parse_bytes};
use mesh_registry::target::Target;
use mesh_registry::translate::{inbound_policy, outbound_policy};
use std::path::Path;

/// Runs one input: a registry file's content.
pub fn run(data: &[u8]) {
    match parse_bytes(Path::new("registry.yaml"), data) {
        Ok(snapshot) => {
            for svc in &snapshot.services {
                for port in &svc.ports {
                    let target = Target::Service { key: svc.key.clone(), port: port.port };
                    let out = outbound_policy(&snapshot, &target);
                    if let Err(e) = OutboundPolicy::compile(&out) {
                        panic!("accepted registry, outbound policy for {target:?} refused by the proxy: {e}");
                    }
                    let inb = inbound_policy(
                        &snapshot,
                        Some("fuzz.local"),
                        &svc.key.namespace,
                        &svc.service_account,
                        port.target_port,
                    );
                    if let Err(e) = InboundPolicy::compile(&inb) {
                        panic!("accepted registry, inbound policy for {target:?} refused by the proxy: {e}");
                    }
                }
            }
        }
        Err(FileError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty(), "rejected without a problem");
            let text = String::from_utf8_lossy(data);
            let lines = yaml_lines(&text);
            for p in &problems {
                assert!(!p.message.trim().is_empty(), "a problem without a message at {}", p.at);
                assert!(!p.message.chars().any(|c| c.is_control() && c != '\n'), "raw control characters: {p}");
                let Some((line, column)) = p.at.text_position() else { panic!("a file problem not in the text: {p}") };
                let line_ok = line >= 1 && line as usize <= lines.len();
                assert!(line_ok, "{p}: line {line} outside the input's {} lines", lines.len());
                let chars = lines[line as usize - 1];
                assert!(
                    column >= 1 && column as usize <= chars + 1,
                    "{p}: column {column} past a line of {chars} characters"
                );
            }
        }
        Err(e @ FileError::Read { .. }) => panic!("parsing bytes cannot fail to read: {e}"),
    }
}

/// Each line's length in characters; YAML breaks lines at `\n`, `\r\n` and `\r`.
fn yaml_lines(text: &str) -> Vec<usize> {
    let mut lines = vec![0];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(0);
            }
            '\n' => lines.push(0),
            _ => {
                if let Some(n) = lines.last_mut() {
                    *n += 1;
                }
            }
        }
    }
    lines
}
