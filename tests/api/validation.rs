//! Bad input: every invalid field is INVALID_ARGUMENT with a field violation naming it, and
//! nothing reaches the upstream (the simulator's request counters stay at zero).

use scan_gateway::grpc::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

const MACHINE: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

fn start(
    machine_id: &str,
    scan_type: i32,
    comment: &str,
    request_id: &str,
) -> pb::StartScanRequest {
    pb::StartScanRequest {
        machine_id: machine_id.into(),
        scan_type,
        comment: comment.into(),
        request_id: request_id.into(),
        priority: 0,
    }
}

#[tokio::test]
async fn each_invalid_start_field_is_named_and_nothing_goes_upstream() {
    let mut app = spawn_app().await;
    let quick = pb::ScanType::Quick as i32;
    let cases: Vec<(pb::StartScanRequest, &str)> = vec![
        (start("", quick, "c", ""), "machine_id"),
        (start("1e5bc9", quick, "c", ""), "machine_id"),
        (start(&format!("{MACHINE}0"), quick, "c", ""), "machine_id"),
        (
            start(&MACHINE.replace('1', "g"), quick, "c", ""),
            "machine_id",
        ),
        (start("../../api/machines", quick, "c", ""), "machine_id"),
        (start(MACHINE, 0, "c", ""), "scan_type"),
        (start(MACHINE, 99, "c", ""), "scan_type"),
        (start(MACHINE, quick, "", ""), "comment"),
        (start(MACHINE, quick, "   ", ""), "comment"),
        (start(MACHINE, quick, &"x".repeat(1001), ""), "comment"),
        (start(MACHINE, quick, "nul\0byte", ""), "comment"),
        (start(MACHINE, quick, "c", "has spaces"), "request_id"),
        (start(MACHINE, quick, "c", &"k".repeat(129)), "request_id"),
    ];
    for (request, field) in cases {
        let status = app.client.start_scan(request.clone()).await.unwrap_err();
        assert_eq!(violated_fields(&status), [field], "{request:?}");

        let run = pb::RunScanRequest {
            machine_id: request.machine_id,
            scan_type: request.scan_type,
            comment: request.comment,
            request_id: request.request_id,
            priority: 0,
        };
        let status = app.client.run_scan(run).await.unwrap_err();
        assert_eq!(violated_fields(&status), [field]);
    }
    assert_eq!(app.sim.api_requests(), 0);
    // The credentials check as serving starts fetches one token; bad input fetches none.
    assert!(
        app.sim.handle.stats().token <= 1,
        "a token was fetched for bad input"
    );
}

#[tokio::test]
async fn all_invalid_fields_are_reported_together() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .start_scan(start("x", 0, "", "a b"))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["machine_id", "scan_type", "comment", "request_id"]
    );
}

#[tokio::test]
async fn invalid_action_ids_and_list_filters_are_refused_before_any_call() {
    let mut app = spawn_app().await;
    for bad in ["", "not-a-guid", "7f3c2a91-5d4e-4b8a-9c1f", "7f3c2a91/../x"] {
        let status = app
            .client
            .get_scan(pb::GetScanRequest {
                fresh: true,
                action_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["action_id"], "{bad:?}");
        let status = app
            .client
            .watch_scan(pb::WatchScanRequest {
                action_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["action_id"], "{bad:?}");
    }
    let status = app
        .client
        .cancel_scan(pb::CancelScanRequest {
            action_id: "nope".into(),
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["action_id", "comment"]);

    let list_cases = [
        (
            pb::ListScansRequest {
                machine_id: "short".into(),
                ..Default::default()
            },
            "machine_id",
        ),
        (
            pb::ListScansRequest {
                status: 42,
                ..Default::default()
            },
            "status",
        ),
        (
            pb::ListScansRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListScansRequest {
                page_token: "o-1".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListScansRequest {
                created_after: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..Default::default()
            },
            "created_after",
        ),
    ];
    for (request, field) in list_cases {
        let status = app.client.list_scans(request.clone()).await.unwrap_err();
        assert_eq!(violated_fields(&status), [field], "{request:?}");
    }
    assert_eq!(app.sim.api_requests(), 0);
}

#[tokio::test]
async fn an_unreadable_grpc_timeout_is_refused_not_ignored() {
    let mut app = spawn_app().await;
    for garbage in ["banana", "5", "123456789S", "10x", "-1S"] {
        let mut request = tonic::Request::new(start_request(&app.sim.machine(0)));
        request
            .metadata_mut()
            .insert("grpc-timeout", garbage.parse().unwrap());
        let status = app.client.start_scan(request).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["grpc-timeout"], "{garbage}");
    }
    assert_eq!(app.sim.handle.stats().run_scan, 0);
    // A readable one is served.
    let mut request = tonic::Request::new(pb::ListScansRequest::default());
    request
        .metadata_mut()
        .insert("grpc-timeout", "5S".parse().unwrap());
    app.client.list_scans(request).await.expect("served");
}

/// A StartScanRequest as a client that disagrees on field 1's type would send it: a varint
/// where the gateway expects a string, which protobuf cannot decode.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongStartScan {
    #[prost(uint64, tag = "1")]
    machine_id: u64,
}

#[tokio::test]
async fn an_undecodable_message_is_invalid_argument() {
    let app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/defender.scan.v1.ScanService/StartScan",
    );
    let status = grpc
        .unary::<_, pb::StartScanResponse, _>(
            tonic::Request::new(WrongStartScan { machine_id: 7 }),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("decode"), "{}", status.message());
    assert_eq!(app.sim.handle.stats().run_scan, 0);
}
