//! `GET /api/machineactions`: ordering, `$filter`, `$top`/`$skip` and refused options.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::Value;

use super::*;

async fn list(sim: &Sim, token: &str, query: &str) -> Resp {
    // Spaces and quotes percent-encoded, as HTTP clients send them.
    let query = query.replace(' ', "%20").replace('\'', "%27");
    sim.call(
        Method::GET,
        &format!("/api/machineactions{query}"),
        token,
        None,
    )
    .await
}

fn ids(resp: &Resp) -> Vec<String> {
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    resp.json()["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Three scans a minute apart on two machines; returns (token, machines, ids oldest first).
async fn populated(sim: &Sim) -> (String, Vec<String>, Vec<String>) {
    let token = sim.token().await;
    let machines = sim.handle.demo_machine_ids(3);
    let mut created = Vec::new();
    for m in &machines {
        created.push(
            sim.scan(&token, m, "Quick").await.json()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        tokio::time::advance(Duration::from_secs(60)).await;
    }
    (token, machines, created)
}

#[tokio::test(start_paused = true)]
async fn lists_newest_first_with_history_of_other_types() {
    let sim = Sim::new(config());
    let (token, _, created) = populated(&sim).await;
    let resp = list(&sim, &token, "").await;
    let json = resp.json();
    assert_eq!(
        json["@odata.context"],
        "https://api.security.microsoft.com/api/$metadata#MachineActions"
    );
    let items = json["value"].as_array().unwrap();
    assert!(items.len() > 3, "history expected");
    assert_eq!(
        ids(&resp)[..3],
        [created[2].clone(), created[1].clone(), created[0].clone()]
    );
    assert!(items.iter().all(|a| a.get("@odata.context").is_none()));
    assert!(items.iter().any(|a| a["type"] != "RunAntiVirusScan"));
    let times: Vec<&str> = items
        .iter()
        .map(|a| a["creationDateTimeUtc"].as_str().unwrap())
        .collect();
    let parsed: Vec<_> = times
        .iter()
        .map(|t| crate::timestamp::parse_literal(t).unwrap())
        .collect();
    assert!(parsed.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
}

#[tokio::test(start_paused = true)]
async fn filters_by_machine_type_status_and_time() {
    let sim = Sim::new(config());
    let (token, machines, created) = populated(&sim).await;
    let q = format!(
        "?$filter=machineId eq '{}' and type eq 'RunAntiVirusScan'&$top=2",
        machines[1]
    );
    assert_eq!(ids(&list(&sim, &token, &q).await), [created[1].clone()]);
    // Encoded the way HTTP clients send it, PascalCase like the samples, upper-case id.
    let q = format!(
        "?%24filter=MachineId%20eq%20%27{}%27",
        machines[0].to_ascii_uppercase()
    );
    assert_eq!(ids(&list(&sim, &token, &q).await), [created[0].clone()]);
    // The first scan finishes 210 s after creation; 180 s have passed, so all still run.
    let q = "?$filter=status eq 'InProgress' or status eq 'Pending'";
    assert_eq!(ids(&list(&sim, &token, q).await).len(), 3);
    let q = "?$filter=creationDateTimeUtc ge 2026-11-26T09:15:05Z";
    assert_eq!(
        ids(&list(&sim, &token, q).await),
        [created[2].clone(), created[1].clone()]
    );
    let q = "?$filter=creationDateTimeUtc gt 2026-11-26T09:15:05Z and type eq 'RunAntiVirusScan'";
    assert_eq!(ids(&list(&sim, &token, q).await), [created[2].clone()]);
    let q = format!("?$filter=id in ('{}', '{}')", created[0], created[2]);
    assert_eq!(
        ids(&list(&sim, &token, &q).await),
        [created[2].clone(), created[0].clone()]
    );
    let q = format!("?$filter=not (machineId ne '{}')", machines[2]);
    assert_eq!(ids(&list(&sim, &token, &q).await), [created[2].clone()]);
    let q =
        "?$filter=requestor eq 'scan-gateway-simulated-app' and type eq 'RunAntiVirusScan'&foo=bar";
    assert_eq!(ids(&list(&sim, &token, q).await).len(), 3);
    // The gateway's own query: ids, machine, type, status and time, as it encodes them.
    let q = format!(
        "?$filter=%28id%20eq%20%27{}%27%20or%20id%20eq%20%27{}%27%29%20and%20machineId%20eq%20%27{}%27%20and%20type%20eq%20%27RunAntiVirusScan%27%20and%20status%20eq%20%27InProgress%27%20and%20creationDateTimeUtc%20ge%202026-11-26T09%3A14%3A05Z&$top=10",
        created[0], created[1], machines[0]
    );
    assert_eq!(ids(&list(&sim, &token, &q).await), [created[0].clone()]);
}

#[tokio::test(start_paused = true)]
async fn filters_defender_refuses_are_refused_with_its_error_body() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    for (filter, message) in [
        (
            "scope eq 'Full'",
            "The query specified in the URI is not valid. The property 'scope' cannot be used in the $filter query option.",
        ),
        (
            "status eq 'pending'",
            "The query specified in the URI is not valid. The string 'pending' is not a valid enumeration type constant. Use one of: Pending, InProgress, Succeeded, Failed, TimeOut, Cancelled.",
        ),
        (
            "type eq 'RUNANTIVIRUSSCAN'",
            "The query specified in the URI is not valid. The string 'RUNANTIVIRUSSCAN' is not a valid enumeration type constant. Use one of: RunAntiVirusScan, Offboard, LiveResponse, CollectInvestigationPackage, Isolate, Unisolate, StopAndQuarantineFile, RestrictCodeExecution, UnrestrictCodeExecution.",
        ),
    ] {
        let resp = list(&sim, &token, &format!("?$filter={filter}")).await;
        assert_error(&resp, StatusCode::BAD_REQUEST, "ODataError");
        assert_eq!(resp.message(), message, "{filter}");
        let json = resp.json();
        let mut keys: Vec<&String> = json["error"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["code", "message", "target"], "{filter}");
    }
    // The documented forms are accepted.
    for filter in [
        "status eq 'Pending'",
        "Status eq 'InProgress' or Status eq 'Cancelled'",
        "type eq 'RunAntiVirusScan' and requestor eq 'Analyst@contoso.com'",
        "MachineId eq 'f46b9bb259ed4a7fb9981b73510e3cc7aa81ec1f'",
        "creationDateTimeUtc ge 2026-11-26T00:00:00Z",
    ] {
        let resp = list(&sim, &token, &format!("?$filter={filter}&$top=2")).await;
        assert_eq!(resp.status, StatusCode::OK, "{filter}: {}", resp.body);
    }
}

#[tokio::test(start_paused = true)]
async fn top_and_skip_page_through_results() {
    let sim = Sim::new(config());
    let (token, _, created) = populated(&sim).await;
    let scans = "?$filter=requestor eq 'scan-gateway-simulated-app'";
    assert_eq!(
        ids(&list(&sim, &token, &format!("{scans}&$top=1")).await),
        [created[2].clone()]
    );
    assert_eq!(
        ids(&list(&sim, &token, &format!("{scans}&$top=1&$skip=1")).await),
        [created[1].clone()]
    );
    assert_eq!(
        ids(&list(&sim, &token, &format!("{scans}&$skip=2")).await),
        [created[0].clone()]
    );
    assert!(ids(&list(&sim, &token, &format!("{scans}&$skip=5")).await).is_empty());
    assert_eq!(
        ids(&list(&sim, &token, "?$top=10000").await).len(),
        ids(&list(&sim, &token, "").await).len()
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_dollar_options_get_the_observed_non_standard_body() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let resp = list(&sim, &token, "?$stop=2").await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.body,
        r#"{"error":{"code":"","message":"The query specified in the URI is not valid. Custom query option '$stop' that starts with '$' is not supported.","details":[]}}"#
    );
}

#[tokio::test(start_paused = true)]
async fn bad_queries_are_odata_errors() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    for query in [
        "?$filter=status eq",
        "?$filter=status eq Pending",
        "?$filter=status gt 'Pending'",
        "?$filter=colour eq 'red'",
        "?$filter=creationDateTimeUtc gt 'yesterday'",
        "?$filter=(status eq 'Pending'",
        "?$filter=status eq 'Pending",
        "?$top=10001",
        "?$top=-1",
        "?$skip=x",
        "?$top=1&$top=2",
        "?$orderby=creationDateTimeUtc desc",
    ] {
        let resp = list(&sim, &token, query).await;
        assert_error(&resp, StatusCode::BAD_REQUEST, "ODataError");
        assert!(
            resp.message()
                .starts_with("The query specified in the URI is not valid. "),
            "{query}: {}",
            resp.body
        );
    }
    let resp = list(&sim, &token, "?$filter=colour eq 'red'").await;
    assert!(
        resp.message()
            .contains("Could not find a property named 'colour'"),
        "{}",
        resp.body
    );
    assert_eq!(resp.json()["error"]["details"], Value::Null);
}

#[tokio::test(start_paused = true)]
async fn a_malformed_list_entry_spoils_only_that_action_and_only_in_lists() {
    let sim = Sim::new(config());
    let (token, _, created) = populated(&sim).await;
    sim.handle.set_faults(crate::Faults {
        malformed_list_entries: vec![created[1].clone()],
        ..crate::Faults::default()
    });
    let json = list(&sim, &token, "").await.json();
    let items = json["value"].as_array().unwrap();
    let status_of = |id: &str| {
        items
            .iter()
            .find(|a| a["id"] == id)
            .map(|a| a["status"].clone())
            .unwrap()
    };
    assert_eq!(status_of(&created[1]), 42);
    assert!(status_of(&created[0]).is_string());
    assert!(status_of(&created[2]).is_string());
    let one = sim
        .call(
            Method::GET,
            &format!("/api/machineactions/{}", created[1]),
            &token,
            None,
        )
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert!(one.json()["status"].is_string(), "read by id, it is whole");
}
