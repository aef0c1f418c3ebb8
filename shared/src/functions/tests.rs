//! The table and the Lua agree: the library registers exactly the table's functions with
//! the table's flags, each reads exactly the keys and arguments its spec names, and each
//! fences as its access says.

use std::collections::BTreeMap;

use super::{Access, Spec, TABLE};
use crate::library;

/// The flags a `{ ... flags = ro }` registration names, as the library declares them.
const RO_FLAGS: &str = "local ro = { 'no-writes' }";

/// Every function the rendered library registers, and whether it is read-only. Every line
/// that mentions `register_function` must be one of the two forms the library uses.
fn registered(src: &str) -> Vec<(&str, bool)> {
    src.lines()
        .filter(|line| line.contains("register_function"))
        .map(|line| registration(src, line))
        .collect()
}

fn registration<'a>(src: &str, line: &'a str) -> (&'a str, bool) {
    if let Some(rest) = line.strip_prefix("redis.register_function('") {
        let (name, rest) = rest.split_once('\'').unwrap_or_default();
        assert_eq!(
            rest,
            format!(", {name})"),
            "unreadable registration: {line}"
        );
        return (name, false);
    }
    let fields: BTreeMap<&str, &str> = line
        .strip_prefix("redis.register_function { ")
        .and_then(|rest| rest.strip_suffix(" }"))
        .unwrap_or_else(|| panic!("unreadable registration: {line}"))
        .split(", ")
        .map(|field| {
            field
                .split_once(" = ")
                .unwrap_or_else(|| panic!("unreadable field {field:?} in: {line}"))
        })
        .collect();
    let name = fields
        .get("function_name")
        .and_then(|n| n.strip_prefix('\'')?.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no function_name in: {line}"));
    assert_eq!(fields.get("callback"), Some(&name), "{line}");
    let read_only = match fields.get("flags") {
        None => false,
        Some(&"ro") => {
            assert!(
                src.contains(RO_FLAGS),
                "the library must declare {RO_FLAGS}"
            );
            true
        }
        Some(other) => panic!("flags {other} are not in the table's vocabulary: {line}"),
    };
    assert!(
        fields
            .keys()
            .all(|k| ["function_name", "callback", "flags"].contains(k)),
        "{line}"
    );
    (name, read_only)
}

#[test]
fn the_library_registers_exactly_the_table() {
    let src = library::source();
    let registered = registered(src);
    let lua: BTreeMap<&str, bool> = registered.iter().copied().collect();
    assert_eq!(lua.len(), registered.len(), "a function registered twice");
    let table: BTreeMap<&str, bool> = TABLE
        .iter()
        .map(|s| (s.name, s.access.read_only()))
        .collect();
    assert_eq!(table.len(), TABLE.len(), "a function twice in the table");
    let missing: Vec<_> = table.keys().filter(|n| !lua.contains_key(*n)).collect();
    let extra: Vec<_> = lua.keys().filter(|n| !table.contains_key(*n)).collect();
    let flags: Vec<_> = table
        .iter()
        .filter(|(n, ro)| lua.get(*n).is_some_and(|lua_ro| lua_ro != *ro))
        .map(|(n, ro)| format!("{n}: read-only {ro} in the table, {} in the Lua", !ro))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && flags.is_empty(),
        "the library and functions::TABLE disagree: not in the Lua {missing:?}, \
         not in the table {extra:?}, flags {flags:?}"
    );
}

/// The body of `local function <name>(...)`, up to its closing `end` (at column 0).
fn body<'a>(src: &'a str, name: &str) -> &'a str {
    let start = src
        .find(&format!("local function {name}("))
        .unwrap_or_else(|| panic!("{name} is not defined"));
    let rest = &src[start..];
    &rest[..rest.find("\nend\n").unwrap_or(rest.len())]
}

/// The highest literal index `<table>[N]` the body reads, and whether it reads
/// `<table>[#<table>]` (the last one).
fn reads(body: &str, table: &str) -> (usize, bool) {
    let open = format!("{table}[");
    let mut highest = 0;
    let mut last = false;
    for (at, _) in body.match_indices(&open) {
        if body[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue; // another name ending in `keys`/`args`
        }
        let inside = &body[at + open.len()..];
        let index = &inside[..inside.find(']').unwrap_or(0)];
        if index == format!("#{table}") {
            last = true;
        } else {
            let n: usize = index
                .parse()
                .unwrap_or_else(|_| panic!("{table}[{index}]: not a literal index"));
            highest = highest.max(n);
        }
    }
    (highest, last)
}

#[test]
fn every_function_reads_the_keys_and_arguments_its_spec_names() {
    let src = library::source();
    for spec in TABLE {
        let body = body(src, spec.name);
        let (highest, last) = reads(body, "keys");
        // `keys[#keys]` is the guard, after every key read by number.
        let keys = if last { highest + 1 } else { highest };
        assert_eq!(keys, spec.keys.len(), "{}: keys {:?}", spec.name, spec.keys);
        let (args, _) = reads(body, "args");
        assert_eq!(args, spec.args.len(), "{}: args {:?}", spec.name, spec.args);
    }
}

/// A writing function refuses to write to a fenced partition before anything else; a
/// restore refuses anywhere else; the others never look.
#[test]
fn every_function_fences_as_its_access_says() {
    let src = library::source();
    for Spec {
        name, access, keys, ..
    } in TABLE
    {
        let body = body(src, name);
        let first = body.lines().nth(1).unwrap_or_default().trim();
        let guard_last = keys.last() == Some(&"guard");
        match access {
            Access::Write => {
                assert!(guard_last, "{name}: the guard is the last key");
                assert_eq!(
                    first, "if fenced(keys[#keys]) then return { 'fenced', 0 } end",
                    "{name}"
                );
            }
            Access::Restore => {
                assert!(guard_last, "{name}: the guard is the last key");
                assert_eq!(
                    first, "if not fenced(keys[#keys]) then return { 'not_fenced', 0 } end",
                    "{name}"
                );
            }
            Access::Read | Access::Fence => {
                assert!(!body.contains("fenced("), "{name} is not fenced");
            }
        }
    }
}
