//! What image pruning must keep for rollbacks (issue 17 part 6), read from the container update
//! journal (`updates`): the image every container ran before an update that finished within
//! the window (a rollback goes back to it), and for an unfinished update both images and the
//! reference it is updating to (it may be between its pull and its create).

use super::{parse_ts, ts, State};
use anyhow::Result;
use chrono::{DateTime, Utc};
use rusqlite::params;

/// One journalled update's images.
#[derive(Clone, Debug, PartialEq)]
pub struct RollbackImages {
    /// The container's name.
    pub container: String,
    pub finished: bool,
    pub updated_at: DateTime<Utc>,
    pub old_image_id: Option<String>,
    pub new_image_id: Option<String>,
    /// The image reference the update was asked for.
    pub target: Option<String>,
}

// === impl State ===

impl State {
    /// Updates unfinished, or finished at or after `since`.
    pub async fn rollback_images(&self, since: DateTime<Utc>) -> Result<Vec<RollbackImages>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT json_extract(record, '$.name'), finished, updated_at,
                        json_extract(record, '$.report.old_image_id'),
                        json_extract(record, '$.report.new_image_id'),
                        json_extract(record, '$.args.image')
                 FROM updates WHERE finished = 0 OR updated_at >= ?1",
            )?;
            let rows = stmt
                .query_map(params![ts(since)], |r| {
                    Ok(RollbackImages {
                        container: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                        finished: r.get::<_, i64>(1)? != 0,
                        updated_at: parse_ts(&r.get::<_, String>(2)?),
                        old_image_id: r.get(3)?,
                        new_image_id: r.get(4)?,
                        target: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
}
