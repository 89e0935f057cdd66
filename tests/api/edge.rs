//! The connections themselves: slow or silent clients, the connection bound, idle
//! keep-alive, and HTTP/2's GOAWAY at shutdown. Each test fails with its bound removed.

use std::time::{Duration, Instant};

use crate::support::app::{spawn_app, start_stoppable, Stoppable};

#[tokio::test]
async fn slow_headers_are_cut_off_and_connections_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(|config| {
        config.header_read_timeout = Duration::from_millis(300);
        config.max_connections = 2;
    })
    .await;
    // A client that never finishes its headers loses its connection.
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buffer = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(_))), "the server closed (or answered 408) within the timeout");
    drop(slow);

    // Two connections held open: a third is not served until one goes.
    let livez = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut connection = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        connection.write_all(livez).await.unwrap();
        let n = connection.read(&mut buffer).await.unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
        held.push(connection);
    }
    let mut third = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    third.write_all(livez).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(150), third.read(&mut buffer)).await;
    assert!(waiting.is_err(), "a third connection was served while two were open");
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buffer)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
}

/// Whether the server closes `connection` within `within` (reads until end of file or an
/// error, discarding what comes).
async fn closed_within(connection: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(within, async {
        while let Ok(n) = connection.read(&mut buffer).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_connection_without_a_request_head_is_closed_within_the_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(|config| config.header_read_timeout = Duration::from_millis(500)).await;
    // Silent; a part of the HTTP/2 preface (whose version detection would wait for the rest);
    // the whole preface and no request; a part of an HTTP/1.1 head.
    let starts: [&[u8]; 4] = [
        b"",
        b"PRI * HTTP/2.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        b"GET /livez HTTP/1.1\r\nHost: x\r\n",
    ];
    for start in starts {
        let mut connection = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        connection.write_all(start).await.unwrap();
        let opened = Instant::now();
        assert!(
            closed_within(&mut connection, Duration::from_secs(3)).await,
            "a connection that sent {:?} is still open",
            String::from_utf8_lossy(start)
        );
        assert!(opened.elapsed() >= Duration::from_millis(300), "closed before the timeout");
    }
}

#[tokio::test]
async fn silent_connections_filling_the_connection_bound_do_not_stop_probes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(|config| {
        config.header_read_timeout = Duration::from_millis(500);
        config.max_connections = 8;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    let mut probe = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    probe.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buffer = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(3), probe.read(&mut buffer))
        .await
        .expect("/livez answers once the silent connections are closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    assert!(asked.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_closes_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The header-read timeout (which hyper also applies between requests) out of the way.
    let app = spawn_app(|config| {
        config.header_read_timeout = Duration::from_secs(30);
        config.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let mut connection = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut buffer = [0u8; 1024];
    for _ in 0..2 {
        connection.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let n = connection.read(&mut buffer).await.unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
        // Busy connections are kept: a request within the idle timeout restarts it.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(closed_within(&mut connection, Duration::from_secs(3)).await, "the idle connection is kept");
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_and_closes_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(|config| {
        config.header_read_timeout = Duration::from_secs(30);
        config.idle_timeout = Duration::from_millis(500);
    })
    .await;
    // Prior knowledge, as routers connect: preface, SETTINGS, and GET /livez on stream 1
    // (HPACK: :method GET, :scheme http, then :path and :authority as literals).
    let mut connection = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let headers: &[u8] = b"\x82\x86\x04\x06/livez\x01\x01x";
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    opening.extend_from_slice(&[0, 0, headers.len() as u8, 1, 0x5, 0, 0, 0, 1]);
    opening.extend_from_slice(headers);
    connection.write_all(&opening).await.unwrap();
    let started = Instant::now();
    // Reads frames (3 bytes length, type, flags, 4 bytes stream), acknowledging SETTINGS and
    // PINGs as a client does, until the server closes; notes when a GOAWAY (type 7) and stream 1's DATA came.
    let (mut goaway, mut answered, mut pending) = (None, false, Vec::new());
    let mut buffer = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(3), connection.read(&mut buffer))
            .await
            .expect("the idle connection is kept")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buffer[..n]);
        while pending.len() >= 9 {
            let length =
                usize::from(pending[0]) << 16 | usize::from(pending[1]) << 8 | usize::from(pending[2]);
            if pending.len() < 9 + length {
                break;
            }
            let frame: Vec<u8> = pending.drain(..9 + length).collect();
            match (frame[3], frame[4] & 1) {
                (0, _) => answered = true,
                (4, 0) => {
                    let _ = connection.write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00").await;
                }
                (6, 0) => {
                    let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    ack.extend_from_slice(&frame[9..]);
                    let _ = connection.write_all(&ack).await;
                }
                (7, _) => goaway = goaway.or(Some(started.elapsed())),
                _ => {}
            }
        }
    }
    assert!(answered, "/livez was answered on the connection");
    let goaway = goaway.expect("a GOAWAY before the close");
    assert!(goaway >= Duration::from_millis(400), "GOAWAY after the idle timeout, not before: {goaway:?}");
}

#[tokio::test]
async fn from_the_first_moment_of_shutdown_http2_connections_get_goaway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = checkout_gateway::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shutdown_delay: Duration::from_secs(3),
        access: Some(checkout_gateway::access::AccessConfig::open()),
        ..checkout_gateway::config::Config::default()
    };
    let Stoppable { addr, stop, .. } = start_stoppable(config).await;
    // An HTTP/2 connection with prior knowledge, as routers open them: preface and SETTINGS.
    let mut connection = tokio::net::TcpStream::connect(addr).await.unwrap();
    connection
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frames = Vec::new();
    let mut buffer = [0u8; 4096];
    let n = connection.read(&mut buffer).await.unwrap();
    frames.extend_from_slice(&buffer[..n]);
    let signalled = Instant::now();
    stop.send(()).unwrap();
    // Frames: 3 bytes length, 1 byte type (7: GOAWAY), 1 byte flags, 4 bytes stream.
    let has_goaway = |frames: &[u8]| {
        let mut at = 0;
        while at + 9 <= frames.len() {
            let length = usize::from(frames[at]) << 16
                | usize::from(frames[at + 1]) << 8
                | usize::from(frames[at + 2]);
            if frames[at + 3] == 7 {
                return true;
            }
            at += 9 + length;
        }
        false
    };
    while !has_goaway(&frames) {
        let n = tokio::time::timeout(Duration::from_secs(2), connection.read(&mut buffer))
            .await
            .expect("a GOAWAY within the shutdown delay")
            .unwrap();
        assert!(n > 0, "the connection closed without a GOAWAY");
        frames.extend_from_slice(&buffer[..n]);
    }
    assert!(signalled.elapsed() < Duration::from_secs(1), "GOAWAY came at once, not at the end of the delay");
}
