//! One malformed header value on one stream. RFC 9113 §8.1.1 makes a malformed request a
//! stream error, but the `h2` crate (0.4) validates field values while it decodes the HPACK
//! block, before any of the gateway's code runs, and answers a byte `http::HeaderValue`
//! refuses (a control character such as 0x01) with `GOAWAY PROTOCOL_ERROR` for the whole
//! connection (`h2::codec::framed_read`: an HPACK error other than `MalformedMessage` is a
//! connection error). The gateway cannot intercept it; this test pins that behaviour with
//! hand-written frames, so a dependency update that fixes it (or worsens it) is noticed, and
//! checks that other connections are unaffected.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK "literal without indexing" field: by static-table name index (4-bit prefix, so
/// below 15 in one byte, else 15 and the rest), else with a literal name; no Huffman.
fn literal(name_index: Option<u8>, name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = match name_index {
        Some(i) if i < 15 => vec![i],
        Some(i) => vec![0x0f, i - 15],
        None => {
            let mut field = vec![0x00, u8::try_from(name.len()).unwrap()];
            field.extend_from_slice(name);
            field
        }
    };
    out.push(u8::try_from(value.len()).unwrap());
    out.extend_from_slice(value);
    out
}

/// A ListScans request's HEADERS block carrying `authorization: <value>`.
fn list_scans_headers(authorization: &[u8]) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    block.extend(literal(
        Some(4),
        b"",
        b"/defender.scan.v1.ScanService/ListScans",
    ));
    block.extend(literal(Some(1), b"", b"localhost"));
    block.extend(literal(Some(31), b"", b"application/grpc"));
    block.extend(literal(None, b"te", b"trailers"));
    block.extend(literal(Some(23), b"", authorization));
    block
}

/// The frames the server sends until it closes the connection, at most `within`: (type,
/// stream, error code for RST_STREAM and GOAWAY).
async fn frames_until_closed(tcp: &mut TcpStream, within: Duration) -> Vec<(u8, u32, Option<u32>)> {
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    let until = tokio::time::Instant::now() + within;
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(until, tcp.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return seen,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, stream) = (
                buf[3],
                u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
            );
            let payload = &buf[9..9 + len];
            let code = match kind {
                RST_STREAM if len >= 4 => Some(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ])),
                GOAWAY if len >= 8 => Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ])),
                _ => None,
            };
            seen.push((kind, stream, code));
            buf.drain(..9 + len);
        }
    }
}

#[tokio::test]
async fn a_control_character_in_a_header_value_costs_its_connection_not_the_gateway() {
    let app = spawn_app().await;
    // The hand-written frames are right: the well-formed request alone is taken (its stream
    // waits for a body that never comes) and the connection stays.
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &list_scans_headers(b"Bearer ok"),
    ));
    tcp.write_all(&hello).await.unwrap();
    let seen = frames_until_closed(&mut tcp, Duration::from_millis(500)).await;
    assert!(
        seen.iter()
            .all(|&(kind, _, _)| kind != GOAWAY && kind != RST_STREAM),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|&(kind, _, _)| kind == SETTINGS),
        "{seen:?}"
    );

    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    // Stream 1: a well-formed request (its body never comes, so it stays open); stream 3:
    // the same with `authorization: Bearer \x01\x02`.
    hello.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &list_scans_headers(b"Bearer ok"),
    ));
    hello.extend(frame(
        HEADERS,
        END_HEADERS,
        3,
        &list_scans_headers(b"Bearer \x01\x02"),
    ));
    tcp.write_all(&hello).await.unwrap();
    let seen = frames_until_closed(&mut tcp, Duration::from_secs(5)).await;

    // Pinned: the whole connection goes (GOAWAY PROTOCOL_ERROR), not only stream 3.
    assert!(
        seen.iter()
            .any(|&(kind, _, code)| kind == GOAWAY && code == Some(PROTOCOL_ERROR)),
        "h2 now answers a malformed field value otherwise (a stream error would be RFC 9113's \
         way: update this test and the README): {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|&(kind, stream, _)| kind == RST_STREAM && stream == 3),
        "{seen:?}"
    );

    // Other connections are served as usual.
    app.client
        .clone()
        .list_scans(scan_gateway::grpc::pb::ListScansRequest::default())
        .await
        .expect("another connection is unaffected");
}
