//! Where a command must run on a cluster.

use crate::slot::key_slot;

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The master of this slot (the command's first key's).
    Slot(u16),
    /// Every master: the function library lives on each (`FUNCTION …`, and a keyless
    /// `FCALL_RO`, which asks each whether its library is the current one).
    AllMasters,
    /// Any node (no key).
    Any,
}

impl Target {
    /// Where `command` with `args` runs. `FCALL`/`FCALL_RO`/`EVAL*` name their keys after a
    /// count, `XINFO` after its subcommand; other commands are taken to start with their key,
    /// which holds for every other single-key command the edge sends.
    pub fn of(command: &str, args: &[String]) -> Self {
        let command = command.to_ascii_uppercase();
        match command.as_str() {
            "FUNCTION" | "SCRIPT" => Target::AllMasters,
            "FCALL" | "FCALL_RO" | "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" => {
                match (args.get(1).map(|n| n.parse::<u32>()), args.get(2)) {
                    (Some(Ok(n)), Some(key)) if n > 0 => Target::Slot(key_slot(key.as_bytes())),
                    _ if command == "FCALL_RO" => Target::AllMasters,
                    _ => Target::Any,
                }
            }
            // A subcommand first, then the key (`XINFO GROUPS <key>`).
            "XINFO" => args
                .get(1)
                .map_or(Target::Any, |key| Target::Slot(key_slot(key.as_bytes()))),
            "PING" | "INFO" | "CLUSTER" | "ASKING" | "TIME" | "ECHO" | "HELLO" | "AUTH" => {
                Target::Any
            }
            _ => args
                .first()
                .map_or(Target::Any, |key| Target::Slot(key_slot(key.as_bytes()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn functions_route_by_their_first_key() {
        let slot = key_slot(b"{fc:p07}:sku:x");
        assert_eq!(
            Target::of(
                "FCALL",
                &args(&["fc_reserve", "2", "{fc:p07}:sku:x", "{fc:p07}:events", "a"])
            ),
            Target::Slot(slot)
        );
        assert_eq!(
            Target::of("fcall_ro", &args(&["fc_stock", "1", "{fc:p07}:sku:x"])),
            Target::Slot(slot)
        );
        assert_eq!(
            Target::of("FCALL_RO", &args(&["fc_version", "0"])),
            Target::AllMasters
        );
        assert_eq!(Target::of("FCALL", &args(&["f", "0", "arg"])), Target::Any);
        assert_eq!(
            Target::of("FUNCTION", &args(&["LOAD", "REPLACE", "#!lua name=x"])),
            Target::AllMasters
        );
        assert_eq!(
            Target::of("GET", &args(&["{fc:p07}:k"])),
            Target::Slot(slot)
        );
        assert_eq!(
            Target::of("XINFO", &args(&["GROUPS", "{fc:p07}:events"])),
            Target::Slot(key_slot(b"{fc:p07}:events"))
        );
        assert_eq!(Target::of("PING", &[]), Target::Any);
        assert_eq!(Target::of("CLUSTER", &args(&["NODES"])), Target::Any);
    }
}
