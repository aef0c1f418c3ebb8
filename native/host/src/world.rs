//! The flashcart world (`wit/flashcart.wit`, world `function`): what a function may
//! import. A component importing anything else is refused at load.
//!
//! Versions match the way wasmtime's linker matches them: the same interface at a
//! semver-compatible version (same major, or same minor below 1.0), so a component
//! built against `wasi:cli/environment@0.2.6` is accepted by a host that implements
//! `@0.2.12`.

/// The `import` lines of the `function` world, in order. A unit test keeps this list
/// and `wit/flashcart.wit` identical.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "wasi:cli/environment@0.2.12",
    "wasi:cli/exit@0.2.12",
    "wasi:cli/stdin@0.2.12",
    "wasi:cli/stdout@0.2.12",
    "wasi:cli/stderr@0.2.12",
    "wasi:cli/terminal-input@0.2.12",
    "wasi:cli/terminal-output@0.2.12",
    "wasi:cli/terminal-stdin@0.2.12",
    "wasi:cli/terminal-stdout@0.2.12",
    "wasi:cli/terminal-stderr@0.2.12",
    "wasi:io/error@0.2.12",
    "wasi:io/poll@0.2.12",
    "wasi:io/streams@0.2.12",
    "wasi:clocks/monotonic-clock@0.2.12",
    "wasi:clocks/wall-clock@0.2.12",
    "wasi:random/random@0.2.12",
    "wasi:random/insecure@0.2.12",
    "wasi:random/insecure-seed@0.2.12",
    "wasi:cli/environment@0.3.0",
    "wasi:cli/exit@0.3.0",
    "wasi:cli/stdin@0.3.0",
    "wasi:cli/stdout@0.3.0",
    "wasi:cli/stderr@0.3.0",
    "wasi:clocks/types@0.3.0",
    "wasi:clocks/monotonic-clock@0.3.0",
    "wasi:clocks/system-clock@0.3.0",
    "wasi:random/random@0.3.0",
    "wasi:random/insecure@0.3.0",
    "wasi:random/insecure-seed@0.3.0",
    "wasi:http/types@0.3.0",
    "spin:redis/redis@3.0.0",
    "spin:variables/variables@3.0.0",
    "spin:key-value/key-value@3.0.0",
];

/// Splits `ns:pkg/iface@1.2.3` into the interface and its version.
fn split(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((iface, version)) => (iface, Some(version)),
        None => (name, None),
    }
}

/// The part of a version that must be equal for two versions to be compatible:
/// the major version, or `0.minor` below 1.0; pre-releases must match exactly.
fn compat_key(version: &str) -> String {
    if version.contains('-') {
        return version.to_owned();
    }
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or_default();
    if major == "0" {
        format!("0.{}", parts.next().unwrap_or_default())
    } else {
        major.to_owned()
    }
}

/// Whether a component may import `name`.
pub fn allows_import(name: &str) -> bool {
    let (iface, version) = split(name);
    ALLOWED_IMPORTS.iter().any(|allowed| {
        let (allowed_iface, allowed_version) = split(allowed);
        allowed_iface == iface
            && match (version, allowed_version) {
                (Some(v), Some(a)) => compat_key(v) == compat_key(a),
                (None, None) => true,
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_matches_the_wit_world() {
        let wit = include_str!("../../../wit/flashcart.wit");
        let world = wit
            .split("world function {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .expect("wit/flashcart.wit has a `world function`");
        let imports: Vec<&str> = world
            .lines()
            .filter_map(|l| l.trim().strip_prefix("import "))
            .map(|l| l.trim_end_matches(';').trim())
            .collect();
        assert_eq!(imports, ALLOWED_IMPORTS);
    }

    #[test]
    fn compatible_versions_only() {
        assert!(allows_import("wasi:cli/environment@0.2.6"));
        assert!(allows_import("spin:redis/redis@3.0.0"));
        assert!(allows_import("spin:redis/redis@3.1.0"));
        assert!(!allows_import("spin:redis/redis@2.0.0"));
        assert!(!allows_import("wasi:cli/environment@0.1.0"));
        assert!(!allows_import("wasi:filesystem/types@0.2.6"));
        assert!(!allows_import("wasi:http/client@0.3.0"));
        assert!(!allows_import("fermyon:spin/llm@2.0.0"));
    }
}
