//! The real binary, spawned as an operator runs it: JSON logs on stdout, read as they come.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The binary, started with `LOG_FORMAT=json` on a free port; its stdout lines arrive on a
/// channel, parsed.
pub struct Gateway {
    child: Child,
    pub addr: std::net::SocketAddr,
    lines: mpsc::Receiver<Value>,
}

impl Drop for Gateway {
    /// A failed test must not leave a gateway running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    // The child is reaped by `Drop` on every path, including a failed start.
    #[allow(clippy::zombie_processes)]
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut command = Command::new(env!("CARGO_BIN_EXE_checkout-gateway"));
        command
            .args(args)
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_AUTH", "none")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("GATEWAY_SHUTDOWN_DELAY", "0s")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let parsed =
                    serde_json::from_str::<Value>(&line).unwrap_or_else(|_| json!({"not_json": line}));
                if send.send(parsed).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap();
            if let Some(addr) = line["addr"].as_str() {
                return Gateway { child, addr: addr.parse().unwrap(), lines };
            }
        }
    }

    /// Sends `signal`, then [`Self::finish`].
    pub async fn stop(self, signal: &str) -> (Option<i32>, Vec<Value>) {
        self.signal(signal);
        self.finish().await
    }

    /// Waits (off the async runtime) for the exit code and the log lines.
    pub async fn finish(self) -> (Option<i32>, Vec<Value>) {
        tokio::task::spawn_blocking(move || {
            let mut gateway = self;
            gateway.wait()
        })
        .await
        .unwrap()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.unwrap().success());
    }

    /// Waits for the process to exit; returns its exit code and every log line it printed.
    fn wait(&mut self) -> (Option<i32>, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "the gateway did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        (code, self.lines.try_iter().collect())
    }
}
