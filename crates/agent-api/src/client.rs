//! The blocking client of the agent's local API, used by the CNI binary and `weftctl`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ApiError;
use crate::proto::{Reply, Request, Response};

/// How long a call waits for each write and read unless [`Client::set_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest response line the client reads (a flow dump of many thousand flows with
/// their traces fits well within it).
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// A connection to the agent's API socket. Calls are sequential on one connection.
///
/// After a transport failure (timeout, reset) the connection is dropped and the next call
/// connects again. A call on a connection the agent closed in the meantime (for idling) is
/// sent once more on a new connection: every request is safe to repeat.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    conn: Option<BufReader<UnixStream>>,
    timeout: Duration,
    /// Whether the current connection has carried a full exchange already.
    reused: bool,
}

impl Client {
    /// Connects to the agent's socket at `path`.
    ///
    /// The error says whether the agent is not running (no socket, or nobody accepting on
    /// it: [`ApiError::NotRunning`]) or the caller may not use it
    /// ([`ApiError::PermissionDenied`]), and names the path.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ApiError> {
        let path = path.as_ref().to_path_buf();
        let conn = open(&path, DEFAULT_TIMEOUT)?;
        Ok(Client {
            path,
            conn: Some(conn),
            timeout: DEFAULT_TIMEOUT,
            reused: false,
        })
    }

    /// The socket path this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The read and write timeout of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the read and write timeout of each call. A zero duration is refused.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ApiError> {
        if let Some(conn) = &self.conn {
            set_timeouts(conn.get_ref(), timeout).map_err(|source| ApiError::Io {
                path: self.path.clone(),
                source,
            })?;
        } else if timeout.is_zero() {
            return Err(ApiError::Io {
                path: self.path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "zero timeout"),
            });
        }
        self.timeout = timeout;
        Ok(())
    }

    /// Sends `req` and returns the agent's reply. An error the agent answers becomes
    /// [`ApiError::Agent`] with its message; a caller that needs the failure's class
    /// (the CNI plugin) uses [`Client::call_raw`].
    pub fn call(&mut self, req: &Request) -> Result<Reply, ApiError> {
        match self.call_raw(req)? {
            Response::Ok { reply } => Ok(reply),
            Response::Error { message, .. } => Err(ApiError::Agent(message)),
        }
    }

    /// Sends `req` and returns the agent's response as it came.
    pub fn call_raw(&mut self, req: &Request) -> Result<Response, ApiError> {
        let mut line = serde_json::to_vec(req).map_err(|source| ApiError::Encode { source })?;
        line.push(b'\n');
        match self.exchange(&line) {
            Err(Failure::Stale) => {
                self.conn = None;
                self.exchange(&line).map_err(|f| self.failed(f))
            }
            r => r.map_err(|f| self.failed(f)),
        }
    }

    /// Records a failed exchange: the connection is in an unknown state and is dropped.
    fn failed(&mut self, f: Failure) -> ApiError {
        self.conn = None;
        match f {
            Failure::Api(e) => e,
            Failure::Stale => ApiError::Closed {
                path: self.path.clone(),
            },
        }
    }

    fn exchange(&mut self, line: &[u8]) -> Result<Response, Failure> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                self.reused = false;
                self.conn.insert(open(&self.path, self.timeout)?)
            }
        };
        let reused = self.reused;
        let io_err = |path: &Path, timeout, source: io::Error| {
            let stale = matches!(
                source.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            );
            if reused && stale {
                return Failure::Stale;
            }
            Failure::Api(io_error(path, timeout, source))
        };
        let timeout = self.timeout;
        if let Err(e) = conn.get_mut().write_all(line) {
            return Err(io_err(&self.path, timeout, e));
        }
        let mut resp = Vec::new();
        let limit = u64::try_from(MAX_RESPONSE_BYTES).unwrap_or(u64::MAX);
        let n = match conn.by_ref().take(limit + 1).read_until(b'\n', &mut resp) {
            Ok(n) => n,
            Err(e) => return Err(io_err(&self.path, timeout, e)),
        };
        if n == 0 {
            return Err(if reused {
                Failure::Stale
            } else {
                Failure::Api(ApiError::Closed {
                    path: self.path.clone(),
                })
            });
        }
        if resp.last() != Some(&b'\n') {
            return Err(Failure::Api(if resp.len() > MAX_RESPONSE_BYTES {
                ApiError::ResponseTooLong {
                    path: self.path.clone(),
                    limit: MAX_RESPONSE_BYTES,
                }
            } else {
                ApiError::Closed {
                    path: self.path.clone(),
                }
            }));
        }
        let parsed = serde_json::from_slice::<Response>(&resp).map_err(|source| {
            Failure::Api(ApiError::BadResponse {
                path: self.path.clone(),
                source,
            })
        })?;
        self.reused = true;
        Ok(parsed)
    }
}

/// Why one exchange failed.
enum Failure {
    /// The reused connection had been closed by the agent before the request reached it.
    Stale,
    Api(ApiError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

fn open(path: &Path, timeout: Duration) -> Result<BufReader<UnixStream>, ApiError> {
    let stream = UnixStream::connect(path).map_err(|e| connect_error(path, e))?;
    set_timeouts(&stream, timeout).map_err(|source| ApiError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(BufReader::new(stream))
}

fn set_timeouts(s: &UnixStream, timeout: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))
}

/// Classifies a failed `connect(2)` to the agent's socket at `path`.
pub fn connect_error(path: &Path, source: io::Error) -> ApiError {
    let path = path.to_path_buf();
    match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ApiError::NotRunning { path, source }
        }
        io::ErrorKind::PermissionDenied => ApiError::PermissionDenied { path, source },
        _ => ApiError::Connect { path, source },
    }
}

/// Classifies a failed read or write on an established connection.
fn io_error(path: &Path, timeout: Duration, source: io::Error) -> ApiError {
    let path = path.to_path_buf();
    match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ApiError::Timeout { path, timeout },
        _ => ApiError::Io { path, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_say_whether_the_agent_runs_or_access_is_denied() {
        let p = Path::new("/run/weft/agent.sock");
        for kind in [io::ErrorKind::NotFound, io::ErrorKind::ConnectionRefused] {
            let e = connect_error(p, io::Error::from(kind));
            assert!(matches!(e, ApiError::NotRunning { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(
                msg.contains("not running") && msg.contains("/run/weft/agent.sock"),
                "{msg}"
            );
        }
        let e = connect_error(p, io::Error::from(io::ErrorKind::PermissionDenied));
        let msg = e.to_string();
        assert!(
            matches!(e, ApiError::PermissionDenied { .. })
                && msg.contains("permission denied")
                && msg.contains("/run/weft/agent.sock"),
            "{msg}"
        );
        let e = connect_error(p, io::Error::from_raw_os_error(36)); // ENAMETOOLONG
        assert!(matches!(e, ApiError::Connect { .. }), "{e:?}");
    }

    #[test]
    fn read_timeouts_are_reported_as_timeouts() {
        let p = Path::new("/s");
        let e = io_error(
            p,
            DEFAULT_TIMEOUT,
            io::Error::from(io::ErrorKind::WouldBlock),
        );
        assert!(e.to_string().contains("did not answer within 30s"), "{e}");
        let e = io_error(
            p,
            DEFAULT_TIMEOUT,
            io::Error::from(io::ErrorKind::BrokenPipe),
        );
        assert!(matches!(e, ApiError::Io { .. }), "{e:?}");
    }
}
