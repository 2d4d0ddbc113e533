//! Signed self-update of the agent (`agent.upgrade`), in two halves that share only files:
//!
//! - `agent`: the unprivileged agent downloads the relay-signed build into its state directory,
//!   verifies it completely (pinned relay key, architecture, version rule, size, SHA-256, a
//!   `--version` smoke test) and asks for it to be installed by writing
//!   `<state_dir>/upgrade/request.json`. It never writes its own binary: the binary's directory
//!   is read-only to it (`ProtectSystem=strict`, and root-owned besides).
//! - `updater`: `flotilla-agent self-update apply`, run as root by
//!   `flotilla-agent-updater.service` (started by `flotilla-agent-updater.path` when the request
//!   appears), verifies again with the relay key root trusts, swaps the binary in place keeping
//!   the previous one, restarts the agent, and reverts when the new version does not reach the
//!   relay in time or crash-loops.
//!
//! `files` holds the formats of the exchanged files and the atomic file operations. The new
//! process reports the command: success after its first welcome (writing `confirmed`, which
//! ends the updater's watch), or `upgrade_reverted` with the updater's reason.

mod agent;
pub mod files;
pub mod updater;

pub use agent::{
    Resumed, UpgradeOptions, UpgradeOutcome, UpgradeSettings, Upgrades,
    DEFAULT_DOWNLOAD_TIMEOUT_SECS, DEFAULT_UPDATER_PICKUP_SECS, SMOKE_TEST_TIMEOUT,
};
pub use files::{UpgradePaths, UpgradeRequest, UpgradeResult, UpgradeStatus};
