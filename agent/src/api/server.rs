//! The agent's side of the local API: binding the root-only unix socket, and serving its
//! JSON-line requests to a [`Handler`], one task per connection.

use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::error::ApiError;
use super::proto::{MAX_REQUEST_BYTES, Request, Response};

/// How long a connection may stay without a request before the agent closes it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The socket's listen backlog: CNI ADDs of many pods starting at once queue here.
const BACKLOG: i32 = 1024;

/// How long to wait after a failed `accept` (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What answers the requests read from the socket. The agent implements it; the transport
/// calls it once per request line, concurrently for different connections.
pub trait Handler: Send + Sync + 'static {
    /// Carries out one request. A refusal or failure is a [`Response::Error`] whose message
    /// the client shows to its user.
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;
}

/// A handler that answers with `before` until the real handler is installed with
/// [`Deferred::set`]: an API that answers while the service behind it is still starting.
pub struct Deferred<B, H> {
    before: B,
    ready: OnceLock<Arc<H>>,
}

impl<B, H> std::fmt::Debug for Deferred<B, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("ready", &self.ready.get().is_some())
            .finish_non_exhaustive()
    }
}

impl<B, H> Deferred<B, H> {
    /// Answers with `before` for now.
    pub fn new(before: B) -> Self {
        Deferred {
            before,
            ready: OnceLock::new(),
        }
    }

    /// Installs the real handler: requests read from now on go to it. Returns false, and
    /// changes nothing, if one was installed already.
    pub fn set(&self, handler: Arc<H>) -> bool {
        self.ready.set(handler).is_ok()
    }
}

impl<B: Handler, H: Handler> Handler for Deferred<B, H> {
    async fn handle(&self, req: Request) -> Response {
        match self.ready.get() {
            Some(h) => h.handle(req).await,
            None => self.before.handle(req).await,
        }
    }
}

/// Limits of [`serve_with`]; [`serve`] uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// A connection with no complete request for this long is closed.
    pub idle_timeout: Duration,
    /// The longest request line accepted (without its newline).
    pub max_request_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            idle_timeout: IDLE_TIMEOUT,
            max_request_bytes: MAX_REQUEST_BYTES,
        }
    }
}

/// Binds the API socket at `path`, readable and writable by its owner only (mode 0600).
///
/// Creates the parent directory (mode 0755) if it is missing. If a socket file is already
/// there, it is probed: when a process answers on it the bind is refused
/// ([`ApiError::AlreadyRunning`]), otherwise the stale file is removed. Any other kind of
/// file at `path` is left alone and refused ([`ApiError::NotASocket`]). The mode is set
/// between `bind(2)` and `listen(2)`, so no client can connect before it is root-only.
///
/// Must be called from within a tokio runtime (the listener registers with its reactor).
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let fail = |what: &'static str| {
        move |source: io::Error| ApiError::Bind {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ApiError::NoRuntime {
            path: path.to_path_buf(),
        });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| ApiError::Bind {
                what: "creating the socket directory for",
                path: path.to_path_buf(),
                source,
            })?;
        // The umask may have narrowed the mode; clients other than root need to traverse it
        // only to be told "permission denied" by the socket itself, which is the clearer error.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(fail("setting the mode of the socket directory for"))?;
    }
    remove_stale(path)?;

    let sock =
        Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail("creating a socket for"))?;
    let addr = SockAddr::unix(path).map_err(fail("invalid socket path"))?;
    sock.bind(&addr).map_err(fail("binding"))?;
    let listening = fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(fail("setting mode 0600 on"))
        .and_then(|()| sock.listen(BACKLOG).map_err(fail("listening on")))
        .and_then(|()| {
            sock.set_nonblocking(true)
                .map_err(fail("setting non-blocking mode on"))
        })
        .and_then(|()| {
            let std: std::os::unix::net::UnixListener = sock.into();
            UnixListener::from_std(std).map_err(fail("registering with the runtime"))
        });
    if listening.is_err() {
        // Do not leave a file behind that the next start would have to judge as stale.
        let _ = fs::remove_file(path);
    }
    let listener = listening?;
    info!(socket = %path.display(), "API socket bound");
    Ok(listener)
}

/// Clears the way for binding at `path`: nothing there, or a socket nobody answers on.
fn remove_stale(path: &Path) -> Result<(), ApiError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ApiError::Bind {
                what: "inspecting",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ApiError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(socket = %path.display(), "removing a stale API socket");
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ApiError::Bind {
                    what: "removing the stale socket",
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
        Err(source) => Err(ApiError::Bind {
            what: "probing the existing socket",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Serves requests on `listener` until `shutdown` completes, with the default limits
/// ([`IDLE_TIMEOUT`], [`MAX_REQUEST_BYTES`]). See [`serve_with`].
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, handler, shutdown, ServeOptions::default()).await;
}

/// Serves requests on `listener` until `shutdown` completes.
///
/// Each connection gets its own task, which reads request lines and writes one response
/// line for each. A line that is not a valid [`Request`] is answered with a
/// [`Response::Error`] carrying the parser's message, and the connection goes on. A line
/// longer than `opts.max_request_bytes` is answered with an error naming the limit, and the
/// connection is closed, as is one that sends no request for `opts.idle_timeout`.
///
/// On shutdown it stops accepting, removes the socket file (if it is still the one bound
/// here), lets each connection finish the request it is carrying out, and returns once all
/// connections are closed.
pub async fn serve_with<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
    opts: ServeOptions,
) {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let identity = path.as_deref().and_then(file_identity);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut next_id: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    next_id += 1;
                    conns.spawn(connection(
                        next_id,
                        stream,
                        Arc::clone(&handler),
                        stop_rx.clone(),
                        opts,
                    ));
                }
                Err(err) => {
                    warn!(?err, "accepting an API connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => reap(done),
        }
    }
    drop(listener);
    if let Some(path) = &path {
        remove_own_socket(path, identity);
    }
    // Connections stop before reading their next request; one in the middle of a request
    // finishes it and writes the response first.
    let _ = stop_tx.send(true);
    while let Some(done) = conns.join_next().await {
        reap(done);
    }
    info!("API server stopped");
}

fn reap(done: Result<(), tokio::task::JoinError>) {
    if let Err(err) = done
        && err.is_panic()
    {
        error!(?err, "an API connection task panicked");
    }
}

/// The device and inode of the file at `path`, to recognise our own socket at shutdown.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Removes the socket file if it is the one this server bound: a newer agent may have
/// replaced it, and its socket must stay.
fn remove_own_socket(path: &Path, identity: Option<(u64, u64)>) {
    if identity.is_some() && file_identity(path) == identity {
        match fs::remove_file(path) {
            Ok(()) => debug!(socket = %path.display(), "API socket removed"),
            Err(err) => warn!(socket = %path.display(), ?err, "removing the API socket failed"),
        }
    }
}

/// What reading one request line produced.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// A line (without its newline) is in the buffer; at end of stream, the unterminated rest.
    Line,
    /// The peer closed the connection with nothing pending.
    Eof,
    /// The line is longer than the limit.
    TooLong,
}

/// Reads one newline-terminated line into `buf`, never holding more than `max` bytes of it.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (take, end) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(if end { take + 1 } else { take });
        if end {
            return Ok(LineRead::Line);
        }
    }
}

/// Serves one connection until the peer closes it, it idles out, or the server stops.
async fn connection<H: Handler>(
    id: u64,
    stream: UnixStream,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
    opts: ServeOptions,
) {
    let span = info_span!("api_connection", conn = id);
    async move {
        debug!("connected");
        let (r, mut w) = stream.into_split();
        let mut reader = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => {
                    debug!("server stopping; closing");
                    break;
                }
                read = tokio::time::timeout(
                    opts.idle_timeout,
                    read_line(&mut reader, &mut line, opts.max_request_bytes),
                ) => read,
            };
            let response = match read {
                Err(_elapsed) => {
                    debug!(idle = ?opts.idle_timeout, "idle; closing");
                    break;
                }
                Ok(Err(err)) => {
                    debug!(?err, "read failed; closing");
                    break;
                }
                Ok(Ok(LineRead::Eof)) => {
                    debug!("closed by the client");
                    break;
                }
                Ok(Ok(LineRead::TooLong)) => {
                    warn!(
                        limit = opts.max_request_bytes,
                        "request line too long; closing"
                    );
                    let resp = Response::error(format!(
                        "request line longer than {} bytes; closing the connection",
                        opts.max_request_bytes
                    ));
                    if send(&mut w, &resp, opts.idle_timeout).await.is_ok() {
                        let _ = w.shutdown().await;
                    }
                    break;
                }
                Ok(Ok(LineRead::Line)) => {
                    if line.trim_ascii().is_empty() {
                        continue;
                    }
                    answer(&handler, &line).await
                }
            };
            if let Err(err) = send(&mut w, &response, opts.idle_timeout).await {
                debug!(?err, "writing the response failed; closing");
                break;
            }
        }
    }
    .instrument(span)
    .await;
}

/// Parses one request line and has the handler answer it.
async fn answer<H: Handler>(handler: &Arc<H>, line: &[u8]) -> Response {
    let req = match serde_json::from_slice::<Request>(line) {
        Ok(req) => req,
        Err(err) => {
            debug!(%err, "invalid request");
            return Response::error(format!("invalid request: {err}"));
        }
    };
    let op = req.op();
    let span = info_span!("api_request", op);
    let h = Arc::clone(handler);
    // Its own task: a handler that panics costs the client an error, not the connection,
    // and a request the client walks away from is still carried to its end.
    let run = tokio::spawn(async move { h.handle(req).await }.instrument(span.clone()));
    let resp = match run.await {
        Ok(resp) => resp,
        Err(err) => {
            span.in_scope(|| error!(?err, "the request handler failed"));
            Response::error(format!("internal error in the agent while handling {op}"))
        }
    };
    span.in_scope(|| match &resp {
        Response::Ok { .. } => debug!("ok"),
        Response::Error { message, code } => debug!(%message, ?code, "refused"),
    });
    resp
}

/// Writes one response line, giving up if the client does not read it in time.
async fn send(w: &mut OwnedWriteHalf, resp: &Response, within: Duration) -> io::Result<()> {
    let mut buf = serde_json::to_vec(resp).unwrap_or_else(|err| {
        // Every response type serializes; keep the client informed if that ever changes.
        serde_json::to_vec(&Response::error(format!(
            "cannot encode the response: {err}"
        )))
        .unwrap_or_default()
    });
    buf.push(b'\n');
    match tokio::time::timeout(within, w.write_all(&buf)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client does not read its response",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, LineRead>> {
        let mut r = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            match read_line(&mut r, &mut buf, max).await.unwrap() {
                LineRead::Line => out.push(Ok(buf)),
                LineRead::Eof => return out,
                LineRead::TooLong => {
                    out.push(Err(LineRead::TooLong));
                    return out;
                }
            }
        }
    }

    struct Says(&'static str);

    impl Handler for Says {
        async fn handle(&self, _req: Request) -> Response {
            Response::error(self.0)
        }
    }

    #[tokio::test]
    async fn deferred_answers_with_the_starting_handler_until_the_real_one_is_set() {
        let d = Deferred::new(Says("starting"));
        let said = |r: Response| match r {
            Response::Error { message, .. } => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(said(d.handle(Request::Status).await), "starting");
        assert!(d.set(Arc::new(Says("running"))));
        assert_eq!(said(d.handle(Request::Status).await), "running");
        assert!(!d.set(Arc::new(Says("again"))), "a second set is refused");
        assert_eq!(said(d.handle(Request::Flows).await), "running");
    }

    #[tokio::test]
    async fn lines_are_split_across_buffer_refills_and_limited() {
        assert_eq!(
            lines(b"abcdefgh\n\nxy", 8).await,
            vec![Ok(b"abcdefgh".to_vec()), Ok(Vec::new()), Ok(b"xy".to_vec())]
        );
        assert_eq!(
            lines(b"abc\nabcdefghi\nabc\n", 8).await,
            vec![Ok(b"abc".to_vec()), Err(LineRead::TooLong)]
        );
        assert_eq!(lines(b"", 8).await, vec![]);
    }
}
