//! The bound server: port 0, URLs, introspection endpoints and graceful shutdown.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::Simulator;

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn binds_port_zero_serves_and_stops() {
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let sim = Simulator::bind(any, config(), Clock::system())
        .await
        .unwrap();
    let port = sim.local_addr().port();
    assert_ne!(port, 0);
    assert_eq!(sim.base_url(), format!("http://127.0.0.1:{port}"));
    assert_eq!(sim.authority_url(), sim.base_url());
    let handle = sim.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sim.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let machines = http_get(addr, "/simulator/machines").await;
    assert!(machines.starts_with("HTTP/1.1 200"), "{machines}");
    assert!(machines.contains(&handle.demo_machine_ids(1)[0]));
    let missing = http_get(addr, "/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let stats = http_get(addr, "/simulator/stats").await;
    assert!(stats.contains(r#""other":1"#), "{stats}");
    assert_eq!(handle.stats().other, 1);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[test]
fn unspecified_listen_addresses_are_reported_as_loopback() {
    let url = |a: &str| super::super::reachable(a.parse().unwrap()).to_string();
    assert_eq!(url("0.0.0.0:8443"), "127.0.0.1:8443");
    assert_eq!(url("[::]:8443"), "[::1]:8443");
    assert_eq!(url("10.1.2.3:80"), "10.1.2.3:80");
}

#[test]
fn handle_finds_each_kind_of_device() {
    let state = SimState::new(config(), Clock::system());
    let handle = state.handle();
    assert_eq!(handle.machines().len(), 50);
    let demo = handle.demo_machine_ids(5);
    assert_eq!(demo.len(), 5);
    let unsupported = handle.unsupported_machine_id().unwrap();
    let offline = handle.offline_machine_id().unwrap();
    assert!(!demo.contains(&unsupported) && !demo.contains(&offline));
    // Same seed, same inventory.
    assert_eq!(
        SimState::new(config(), Clock::system()).handle().machines(),
        handle.machines()
    );
}
