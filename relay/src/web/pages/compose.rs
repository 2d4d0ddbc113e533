//! The agent page's "Compose drift" table: the compose containers whose running image differs
//! from what their project's files declare (from the agent's latest heartbeat).

use flotilla_shared::compose::ComposeDrift;
use maud::{html, Markup};

/// One row per drifted container.
pub fn drift_table(list: &[ComposeDrift]) -> Markup {
    html! {
        table data-test="compose-drift" {
            thead { tr {
                th { "Container" } th { "Project" } th { "Service" } th { "Runs" } th { "Project declares" }
            } }
            tbody {
                @for d in list {
                    tr data-test="compose-drift-row" data-container=(d.container) {
                        td { (d.container) }
                        td { (d.project) }
                        td { (d.service) }
                        td { code { (d.running_image) } }
                        td {
                            @match (&d.declared_image, &d.problem) {
                                (Some(img), _) => code { (img) },
                                (None, p) => span.error { "unreadable: " (p.as_deref().unwrap_or("")) },
                            }
                        }
                    }
                }
            }
        }
        p.muted { "The next docker-compose up -d in the project would change these containers." }
    }
}
