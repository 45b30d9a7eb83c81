//! A Python timing server for benchmarks that interleave their own runs with a Python
//! reference's (the machine is shared; interleaving makes both sides see the same load): a script
//! under `xtask/python/`, run with `$METAREP_PYTHON` (default `python3`), that prints one JSON
//! line with `"ready": true` once set up and then answers one line per request line.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::BoxError;

/// A running Python timing server.
pub struct PyServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Everything the script wrote to stderr so far (drained by a thread, so that a chatty
    /// script never blocks on a full pipe).
    stderr: Arc<Mutex<String>>,
    drain: Option<JoinHandle<()>>,
    /// The `ready` line, parsed.
    pub info: serde_json::Value,
}

impl PyServer {
    /// Starts `xtask/python/<script> args...`, writes `first_input` (if any) as its first stdin
    /// line and waits for the `ready` line. The error says what went wrong and names `needs` (the
    /// packages to install, e.g. `pip install torch transformer_lens`).
    pub fn start(
        script: &str,
        args: &[String],
        first_input: Option<&str>,
        needs: &str,
    ) -> Result<Self, String> {
        let py = crate::fixtures::python();
        let path = crate::fixtures::repo_root()
            .join("xtask/python")
            .join(script);
        let mut child = Command::new(&py)
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!("{py} not runnable ({e}); set METAREP_PYTHON to a Python with these packages: {needs}")
            })?;
        let (Some(stdin), Some(stdout), Some(mut err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(format!("{py} {script}: no pipes to the child process"));
        };
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let drain = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let mut server = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr,
            drain: Some(drain),
            info: serde_json::Value::Null,
        };
        let ready = first_input
            .map_or(Ok(()), |line| server.send(line))
            .and_then(|()| server.read_line());
        match ready.map(|l| serde_json::from_str::<serde_json::Value>(l.trim())) {
            Ok(Ok(info)) if info["ready"] == true => {
                server.info = info;
                Ok(server)
            }
            _ => {
                let _ = server.child.kill();
                let _ = server.child.wait();
                if let Some(d) = server.drain.take() {
                    let _ = d.join();
                }
                Err(format!(
                    "{py} {script} failed ({}); set METAREP_PYTHON to a Python with these packages: {needs}",
                    server.last_error()
                ))
            }
        }
    }

    /// Sends one request line and returns the answer line (without the newline).
    pub fn request(&mut self, line: &str) -> Result<String, BoxError> {
        self.send(line)?;
        let answer = self.read_line()?;
        Ok(answer.trim_end().to_string())
    }

    /// Sends one request line and parses the answer as JSON.
    pub fn request_json(&mut self, line: &str) -> Result<serde_json::Value, BoxError> {
        let answer = self.request(line)?;
        serde_json::from_str(&answer).map_err(|e| {
            format!(
                "the Python server answered {line:?} with {answer:?} ({e}); its stderr ends: {}",
                self.last_error()
            )
            .into()
        })
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("writing to the Python server: {e}"))
    }

    /// The next stdout line; an error (naming the last stderr line) at end of output.
    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(format!("the Python server exited: {}", self.last_error())),
            Ok(_) => Ok(line),
            Err(e) => Err(format!("reading from the Python server: {e}")),
        }
    }

    /// The last non-empty line the script wrote to stderr (progress bars end lines with `\r`).
    fn last_error(&self) -> String {
        let err = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        err.split(['\n', '\r'])
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("no output")
            .to_string()
    }

    /// Sends `quit`, returns the script's last answer line if it writes one, and waits for it.
    pub fn quit(mut self) -> Option<String> {
        self.send("quit").ok()?;
        let line = self.read_line().ok();
        line.map(|l| l.trim_end().to_string())
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }
}
