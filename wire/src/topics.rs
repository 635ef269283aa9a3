//! Topic names. Every topic chime uses is `<prefix>.<role>`, so several chime
//! deployments (or several tests) can share one broker without seeing each other.

/// The names of chime's four topics for one deployment prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Input commands (schedule / cancel), keyed by timer id.
    pub timers: String,
    /// Compacted per-partition state, written only by the partition's owning engine.
    pub changelog: String,
    /// One record per firing, keyed by timer id; consumed by dispatchers.
    pub fires: String,
    /// Undecodable input and undeliverable fires, with the reason.
    pub dead_letters: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Topics {
            timers: format!("{prefix}.timers"),
            changelog: format!("{prefix}.changelog"),
            fires: format!("{prefix}.fires"),
            dead_letters: format!("{prefix}.dead-letters"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_gives_design_names() {
        let t = Topics::new("chime");
        assert_eq!(t.timers, "chime.timers");
        assert_eq!(t.changelog, "chime.changelog");
        assert_eq!(t.fires, "chime.fires");
        assert_eq!(t.dead_letters, "chime.dead-letters");
    }
}
