//! OpenAPI schemas (feature `openapi`, enabled only by the relay) of the types that travel as
//! their text form (`serde(try_from = "String", into = "String")` or a hand-written serde impl):
//! the derive cannot see that, so each is described here as a string with its syntax.

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// A string schema with a description of its syntax.
fn text(description: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .examples([serde_json::Value::String(example.to_string())])
        .into()
}

macro_rules! text_schema {
    ($ty:ty, $name:literal, $description:literal, $example:literal) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                text($description, $example)
            }
        }
        impl ToSchema for $ty {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
        }
    };
}

text_schema!(
    crate::selector::Selector,
    "Selector",
    "Label selector: comma-separated `key=value`, `key!=value`, `key` or `!key` terms, all of which must match (empty: every agent).",
    "region=eu,tier=build"
);
text_schema!(
    crate::limit::Limit,
    "Limit",
    "A count (`3`) or a percentage of the group (`25%`).",
    "25%"
);
text_schema!(
    crate::rollout::StageSpec,
    "StageSpec",
    "A rollout stage as `<who>:<soak>`: who is a percentage of the fleet (`5%`) or a selector (`env=staging`), soak a duration (`24h`).",
    "5%:24h"
);
text_schema!(
    crate::update::HealthSpec,
    "HealthSpec",
    "How the new container proves it works: `auto`, `docker`, `running`, `http:<port><path>` or `tcp:<port>`.",
    "http:8080/healthz"
);
