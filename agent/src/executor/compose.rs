//! `compose.update` in the executor: every container of the project's group locked at once
//! before the updater runs it, or the command refused as busy with nothing changed.

use super::Shared;
use flotilla_shared::command::{error_codes, ErrorInfo};

/// `compose.update`: every container of the group locked at once, or refused as busy.
pub(super) async fn run_compose_update(
    shared: &Shared,
    command_id: &str,
    args: &flotilla_shared::compose::ComposeUpdateArgs,
) {
    let updater = &shared.updater;
    if let Err(message) = args.validate() {
        let e = ErrorInfo {
            code: error_codes::INVALID_ARGS.into(),
            message: message.into(),
        };
        return updater.refuse_compose(command_id, args, e).await;
    }
    let members = match updater.compose_members(args).await {
        Ok(m) => m,
        Err(e) => return updater.refuse_compose(command_id, args, e).await,
    };
    let mut guards = Vec::new();
    for m in &members {
        match shared.locks.try_lock(&m.name) {
            Some(g) => guards.push(g),
            None => {
                let e = ErrorInfo {
                    code: error_codes::BUSY.into(),
                    message: format!(
                        "container {} is busy with another command; nothing was changed",
                        m.name
                    ),
                };
                return updater.refuse_compose(command_id, args, e).await;
            }
        }
    }
    updater.run_compose(command_id, args, members).await;
}
