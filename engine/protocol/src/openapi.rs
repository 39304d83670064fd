//! The schemas of the daemon's OpenAPI document (`components.schemas` of
//! engine/server/src/openapi.json), generated from the types of this crate so that the
//! document says what the daemon does. A test in the server rewrites them with `BLESS=1` and
//! fails when the checked-in document is stale.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use schemars::generate::{Contract, SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value};

use crate::*;

/// Where the OpenAPI document keeps its schemas; every `$ref` points there.
const SCHEMAS: &str = "/components/schemas";

/// Every answer as the daemon writes it (each field present, `null` where it may be), and
/// every request as the daemon reads it (fields with a default may be left out), by name.
///
/// # Panics
/// When a type shared by answers and requests (a status, a role) would read differently from
/// how it is written: one name cannot stand for two schemas.
pub fn openapi_schemas() -> Map<String, Value> {
    let generator = |contract: Contract| -> SchemaGenerator {
        SchemaSettings::draft2020_12()
            .with(|s| {
                s.definitions_path = SCHEMAS.into();
                s.contract = contract;
                s.meta_schema = None;
            })
            .into_generator()
    };
    let mut answers = generator(Contract::Serialize);
    fn add<T: JsonSchema>(generator: &mut SchemaGenerator) {
        generator.subschema_for::<T>();
    }
    add::<ErrorBody>(&mut answers);
    add::<RunList>(&mut answers);
    add::<RunDetail>(&mut answers);
    add::<Accepted>(&mut answers);
    add::<Cancelling>(&mut answers);
    add::<Resumed>(&mut answers);
    add::<ApprovalView>(&mut answers);
    add::<WorkflowList>(&mut answers);
    add::<LockList>(&mut answers);
    add::<LockView>(&mut answers);
    add::<AuditLog>(&mut answers);
    add::<TokenList>(&mut answers);
    add::<NewToken>(&mut answers);
    add::<SessionView>(&mut answers);
    add::<EnvironmentList>(&mut answers);
    add::<DeployCheck>(&mut answers);
    add::<RunWhy>(&mut answers);
    add::<GrantHistory>(&mut answers);
    add::<Event>(&mut answers);
    add::<RunNotice>(&mut answers);
    let mut requests = generator(Contract::Deserialize);
    add::<CreateRun>(&mut requests);
    add::<ResumeRun>(&mut requests);
    add::<Decide>(&mut requests);
    add::<PutLock>(&mut requests);
    add::<CreateToken>(&mut requests);
    add::<SignIn>(&mut requests);
    add::<RunStatus>(&mut requests);

    let mut schemas: BTreeMap<String, Value> = answers.take_definitions(true).into_iter().collect();
    for (name, schema) in requests.take_definitions(true) {
        match schemas.get(&name) {
            Some(written) => assert_eq!(
                written, &schema,
                "`{name}` reads differently from how it is written"
            ),
            None => {
                schemas.insert(name, schema);
            }
        }
    }
    schemas.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields_and_answers_name_every_field() {
        let schemas = openapi_schemas();
        let create = &schemas["CreateRun"];
        assert_eq!(create["additionalProperties"], false, "{create}");
        assert_eq!(
            create["required"],
            serde_json::json!(["workflow"]),
            "{create}"
        );
        let lock = &schemas["LockView"];
        assert_eq!(
            lock["required"],
            serde_json::json!(["key", "owner", "reason", "created_at", "expires_at"]),
            "{lock}"
        );
    }
}
