//! The Redis function library (Lua), versioned so a host can tell whether the loaded copy
//! is current.
//!
//! The source lives in `redis/flashcart.lua`; [`source`] fills in the version and the order
//! state machine's transition table (rendered from [`crate::order`]), so Lua and Rust share
//! one definition of which transitions are legal.

use std::sync::OnceLock;

use crate::order::lua_transition_table;

const TEMPLATE: &str = include_str!("../redis/flashcart.lua");

/// The library name registered with `FUNCTION LOAD`.
pub const NAME: &str = "flashcart";

/// The version of the library: a digest of its full source, so any change to the Lua or the
/// transition table is a new version.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let body = render("", &lua_transition_table());
        format!(
            "{}-{}",
            env!("CARGO_PKG_VERSION"),
            &hex::encode(crate::digest(&[body.as_bytes()]))[..12]
        )
    })
}

/// The full library source, ready for `FUNCTION LOAD REPLACE`.
pub fn source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| render(version(), &lua_transition_table()))
}

fn render(version: &str, transitions: &str) -> String {
    TEMPLATE
        .replace("__VERSION__", version)
        .replace("__TRANSITIONS__", transitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_is_filled_in() {
        let src = source();
        assert!(src.starts_with("#!lua name=flashcart\n"));
        assert!(!src.contains("__VERSION__") && !src.contains("__TRANSITIONS__"));
        assert!(src.contains(version()));
        assert!(src.contains("cancelled = { payment = 'paid_after_cancel', }"));
    }
}
