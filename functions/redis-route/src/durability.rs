//! How sure a write must be before the edge says yes: the `durability` variable.
//!
//! - `local` (the default): the master's answer is the answer. A write the master made but
//!   had not yet sent to a replica is lost if a failover promotes that replica.
//! - `replicated`: after every write (`FCALL`), `WAIT 1 <durability_wait_ms>` on the same
//!   connection. `WAIT` counts the replicas that acknowledged everything the *connection*
//!   wrote so far, so it covers our write; when none did in time the request is answered 503
//!   and the buyer's retry (same Idempotency-Key) gets the decision stored by the first
//!   attempt, never a second one.

/// The durability profile of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The master's word.
    Local,
    /// A replica's word too: `WAIT 1 timeout_ms` after every write.
    Replicated {
        /// How long a replica has to confirm a write, ms.
        timeout_ms: u64,
    },
}

/// A `durability` or `durability_wait_ms` value that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurabilityError {
    /// Not `local` or `replicated`.
    #[error("variable durability: {0:?} is not \"local\" or \"replicated\"")]
    Profile(String),
    /// Not a number of milliseconds, or 0 (`WAIT` with 0 waits forever).
    #[error("variable durability_wait_ms: {0:?} is not a number of milliseconds above 0")]
    Wait(String),
}

impl Durability {
    /// How long a replica has to confirm a write when nothing says otherwise, ms.
    pub const DEFAULT_WAIT_MS: u64 = 100;

    /// Reads the `durability` and `durability_wait_ms` variables (`None`: unset).
    ///
    /// # Errors
    /// When either is not a value it can take: a typo must not quietly mean `local`.
    pub fn parse(profile: Option<&str>, wait_ms: Option<&str>) -> Result<Self, DurabilityError> {
        let timeout_ms = match wait_ms.map(str::trim) {
            None => Self::DEFAULT_WAIT_MS,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .ok_or_else(|| DurabilityError::Wait(v.to_owned()))?,
        };
        match profile.map(str::trim) {
            None | Some("local") => Ok(Durability::Local),
            Some("replicated") => Ok(Durability::Replicated { timeout_ms }),
            Some(other) => Err(DurabilityError::Profile(other.to_owned())),
        }
    }

    /// Whether `command` writes, so that [`Durability::Replicated`] waits for a replica after
    /// it. Every write the edge makes is a function call; `FCALL_RO` and plain reads do not
    /// write, and `FUNCTION LOAD` is an operator's step, not a buyer's decision.
    pub fn waits_after(&self, command: &str) -> Option<u64> {
        match self {
            Durability::Replicated { timeout_ms } if command.eq_ignore_ascii_case("FCALL") => {
                Some(*timeout_ms)
            }
            Durability::Local | Durability::Replicated { .. } => None,
        }
    }
}

/// Whether `message` is a master refusing a write because too few replicas are connected
/// (`NOREPLICAS`, from `min-replicas-to-write`): nothing was written.
pub fn is_no_replicas(message: &str) -> bool {
    message.to_ascii_uppercase().contains("NOREPLICAS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_typos_are_refused() {
        assert_eq!(Durability::parse(None, None), Ok(Durability::Local));
        assert_eq!(
            Durability::parse(Some("local"), None),
            Ok(Durability::Local)
        );
        assert_eq!(
            Durability::parse(Some(" replicated "), Some("250")),
            Ok(Durability::Replicated { timeout_ms: 250 })
        );
        assert_eq!(
            Durability::parse(Some("replicated"), None),
            Ok(Durability::Replicated {
                timeout_ms: Durability::DEFAULT_WAIT_MS
            })
        );
        let typo = Durability::parse(Some("replica"), None).expect_err("a typo");
        assert!(typo.to_string().contains("variable durability"), "{typo}");
        for wait in ["0", "-1", "1s", ""] {
            let bad = Durability::parse(Some("replicated"), Some(wait)).expect_err(wait);
            assert!(bad.to_string().contains("durability_wait_ms"), "{bad}");
        }
    }

    #[test]
    fn only_function_calls_wait() {
        let replicated = Durability::Replicated { timeout_ms: 50 };
        assert_eq!(replicated.waits_after("FCALL"), Some(50));
        assert_eq!(replicated.waits_after("fcall"), Some(50));
        for command in ["FCALL_RO", "FUNCTION", "CLUSTER", "GET"] {
            assert_eq!(replicated.waits_after(command), None, "{command}");
        }
        assert_eq!(Durability::Local.waits_after("FCALL"), None);
        assert!(is_no_replicas(
            "An error was signalled by the server - NoReplicas: Not enough good replicas to write."
        ));
        assert!(is_no_replicas(
            "NOREPLICAS Not enough good replicas to write."
        ));
        assert!(!is_no_replicas("ERR unknown"));
    }
}
