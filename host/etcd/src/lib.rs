//! An etcd [`ControlStore`], so several hosts share plugins, routes and tenants and each sees
//! the others' changes through watches.
//!
//! Everything lives under `<namespace>/`:
//! - `v/<key>`: one tag byte, then the value itself or the manifest of its chunks;
//! - `c/<key>//<sha256 of the value>/<index>`: the chunks of a value too large for one etcd
//!   request (etcd refuses requests over 1.5 MiB). `//` never occurs in a key, so one key's
//!   chunks never fall under another key's chunk prefix.
//!
//! The trait is synchronous and is called from plain threads and from other runtimes' workers,
//! so the store runs its own small tokio runtime and each call waits on a std channel.

use anyhow::{Context as _, Result, anyhow, bail};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KvClient, PutOptions, Txn, TxnOp, TxnOpResponse, WatchClient,
    WatchOptions, WatchStream,
};
use quarry_host::control::{Change, ControlStore, Watch, check_key};
use sha2::{Digest as _, Sha256};
use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;
use tonic::Code;

const INLINE: u8 = 0;
const CHUNKED: u8 = 1;
/// Larger values are chunked. A compare-and-swap carries the expected and the new stored value
/// in one request, so two of these must fit under etcd's 1.5 MiB limit.
const INLINE_MAX: usize = 512 << 10;
const CHUNK: usize = 1 << 20;
/// The largest value a manifest may name; plugin uploads stop far below it.
const MAX_VALUE: u64 = 1 << 30;
/// Watch responses batch events, and tonic's default 4 MiB would refuse a batch of large values.
const MAX_MESSAGE: usize = 64 << 20;
/// Attempts to write a chunked value when concurrent cleanups keep removing its chunks.
const ATTEMPTS: usize = 10;

/// Where the chunks of a value are, and how to check they are whole.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Manifest {
    sha256: [u8; 32],
    len: u64,
    chunks: u32,
}

impl Manifest {
    fn of(value: &[u8]) -> Manifest {
        Manifest { sha256: Sha256::digest(value).into(), len: value.len() as u64, chunks: value.len().div_ceil(CHUNK) as u32 }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(45);
        out.push(CHUNKED);
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.chunks.to_le_bytes());
        out
    }

    fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a value key holds.
#[derive(Debug, PartialEq, Eq)]
enum Stored<'a> {
    Inline(&'a [u8]),
    Chunked(Manifest),
}

/// The bytes stored at the value key for `value`. Deterministic (a manifest depends only on the
/// content), so a compare-and-swap compares `encode(expected)` with what etcd holds.
fn encode(value: &[u8]) -> Vec<u8> {
    if value.len() <= INLINE_MAX { [&[INLINE][..], value].concat() } else { Manifest::of(value).encode() }
}

fn decode(stored: &[u8]) -> Result<Stored<'_>> {
    match stored.split_first() {
        Some((&INLINE, value)) => Ok(Stored::Inline(value)),
        Some((&CHUNKED, rest)) if rest.len() == 44 => {
            let manifest = Manifest {
                sha256: rest[..32].try_into().expect("32 bytes"),
                len: u64::from_le_bytes(rest[32..40].try_into().expect("8 bytes")),
                chunks: u32::from_le_bytes(rest[40..].try_into().expect("4 bytes")),
            };
            // Checked before anything is sized by it: a damaged manifest must not ask for 2^64 bytes.
            if manifest.len > MAX_VALUE || u64::from(manifest.chunks) != manifest.len.div_ceil(CHUNK as u64) {
                bail!("a manifest of {} bytes in {} chunks (at most {MAX_VALUE} bytes, in 1 MiB chunks)", manifest.len, manifest.chunks);
            }
            Ok(Stored::Chunked(manifest))
        }
        _ => bail!("not a value this store wrote (unknown tag or a short manifest)"),
    }
}

/// An etcd-backed control store. Cheap to call from many threads; dropping it stops its watches.
pub struct EtcdStore {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Inner {
    kv: KvClient,
    watches: WatchClient,
    ns: String,
    /// For error messages.
    endpoints: String,
    request_timeout: Duration,
}

impl EtcdStore {
    /// Connect with a 5 s connect timeout and a 10 s timeout per request.
    pub fn connect(endpoints: &[String], namespace: &str) -> Result<EtcdStore> {
        Self::connect_with_timeouts(endpoints, namespace, Duration::from_secs(5), Duration::from_secs(10))
    }

    /// Connect, giving up after `connect`; each etcd request then gets `request`.
    pub fn connect_with_timeouts(endpoints: &[String], namespace: &str, connect: Duration, request: Duration) -> Result<EtcdStore> {
        if check_key(namespace).is_err() || namespace.contains('/') {
            bail!("`{namespace}` is not an etcd namespace for the control store (a plain name, without `/`)");
        }
        if endpoints.is_empty() {
            bail!("no etcd endpoints: set `control.etcd.endpoints` (e.g. [\"http://127.0.0.1:2379\"])");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("quarry-etcd")
            .enable_all()
            .build()
            .context("cannot start the etcd store's runtime")?;
        let joined = endpoints.join(", ");
        let unreachable = format!(
            "cannot reach etcd at {joined} within {} s: is it running, and are `control.etcd.endpoints` right?",
            connect.as_secs_f32()
        );
        let (endpoints, ns) = (endpoints.to_vec(), namespace.to_string());
        let connected = run(&runtime, async move {
            // Pings, so a watch on a connection that died silently fails and is made again.
            let options = ConnectOptions::new().with_connect_timeout(connect).with_timeout(request).with_keep_alive(Duration::from_secs(10), request);
            let client = Client::connect(&endpoints, Some(options)).await.with_context(|| unreachable.clone())?;
            let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
            // The client connects lazily; ask for something small so a wrong address fails here.
            match tokio::time::timeout(connect, kv.get(format!("{ns}/"), Some(GetOptions::new().with_count_only()))).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(anyhow!(e).context(unreachable)),
                Err(_) => bail!(unreachable),
            }
            let watches = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
            Ok(Inner { kv, watches, ns, endpoints: endpoints.join(", "), request_timeout: request })
        });
        match connected {
            Ok(inner) => Ok(EtcdStore { inner: Arc::new(inner), runtime: Some(runtime) }),
            Err(e) => {
                // Dropping a runtime blocks, which panics inside another runtime.
                runtime.shutdown_background();
                Err(e)
            }
        }
    }

    fn run<T: Send + 'static>(&self, work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        run(self.runtime.as_ref().expect("the runtime lives as long as the store"), work)
    }
}

/// Run `work` on the store's runtime and wait for it on this thread, which may belong to another
/// runtime (so no `block_on` here).
fn run<T: Send + 'static>(runtime: &tokio::runtime::Runtime, work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv().map_err(|_| anyhow!("the etcd store stopped during a call"))?
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Never blocks, so dropping the store inside another runtime cannot panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Inner {
    fn value_key(&self, key: &str) -> String {
        format!("{}/v/{key}", self.ns)
    }

    fn chunk_prefix(&self, key: &str, manifest: &Manifest) -> String {
        format!("{}/c/{key}//{}/", self.ns, manifest.hex())
    }

    fn chunk_key(&self, key: &str, manifest: &Manifest, index: u32) -> String {
        // Zero-padded so the chunks list in order.
        format!("{}{index:06}", self.chunk_prefix(key, manifest))
    }

    /// One etcd request, bounded by the request timeout (tonic's own timeout does not cover
    /// waiting for a connection), with an error that says what to check.
    async fn rpc<T>(&self, what: &str, key: &str, call: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
        use etcd_client::Error as E;
        let unreachable = || {
            format!(
                "cannot reach etcd at {} within {} s to {what} `{key}`: is it running, and are `control.etcd.endpoints` right?",
                self.endpoints,
                self.request_timeout.as_secs_f32()
            )
        };
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e @ (E::TransportError(_) | E::IoError(_)))) => Err(anyhow!(e).context(unreachable())),
            // A connection that breaks mid-request (etcd going down) comes back as `Unknown`.
            Ok(Err(E::GRpcStatus(s))) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown) => {
                Err(anyhow!("{}", s.message()).context(unreachable()))
            }
            Ok(Err(e)) => Err(anyhow!(e).context(format!("etcd at {} refused to {what} `{key}`", self.endpoints))),
            Err(_) => Err(anyhow!(unreachable())),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let resp = self.rpc("read", key, self.kv.clone().get(self.value_key(key), None)).await?;
        let Some(kv) = resp.kvs().first() else { return Ok(None) };
        // Chunks are read at this revision, so a concurrent replacement cannot mix generations.
        let revision = resp.header().map_or(0, |h| h.revision());
        self.value(key, kv.value(), revision).await.map(Some)
    }

    /// The value `stored` at `key` stands for, reading chunks as of `revision`.
    async fn value(&self, key: &str, stored: &[u8], revision: i64) -> Result<Vec<u8>> {
        let damaged = || format!("`{key}` in the etcd control store is damaged; write it again");
        let manifest = match decode(stored).with_context(damaged)? {
            Stored::Inline(value) => return Ok(value.to_vec()),
            Stored::Chunked(manifest) => manifest,
        };
        let mut value = Vec::with_capacity(manifest.len as usize);
        for index in 0..manifest.chunks {
            let chunk = self.chunk_key(key, &manifest, index);
            let resp = self.rpc("read", key, self.kv.clone().get(chunk.as_str(), Some(GetOptions::new().with_revision(revision)))).await?;
            let kv = resp.kvs().first().with_context(|| format!("chunk {index} of {} is missing", manifest.chunks)).with_context(damaged)?;
            value.extend_from_slice(kv.value());
        }
        if Manifest::of(&value) != manifest {
            return Err(anyhow!("its chunks do not match its length and sha256")).with_context(damaged);
        }
        Ok(value)
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let options = GetOptions::new().with_prefix().with_keys_only();
        let resp = self.rpc("list", prefix, self.kv.clone().get(self.value_key(prefix), Some(options))).await?;
        let strip = self.value_key("");
        // etcd returns keys sorted by their bytes, which is the order of `String`s too.
        Ok(resp.kvs().iter().filter_map(|kv| kv.key_str().ok()?.strip_prefix(&strip).map(str::to_string)).collect())
    }

    /// Write the chunks of a large value (chunk 0 first) and return the bytes for its value key,
    /// with the comparisons that make sure its chunks are still there when that key is written.
    async fn prepare(&self, key: &str, value: &[u8]) -> Result<(Vec<u8>, Vec<Compare>)> {
        if value.len() <= INLINE_MAX {
            return Ok((encode(value), Vec::new()));
        }
        if value.len() as u64 > MAX_VALUE {
            bail!("`{key}` is {} bytes; the etcd control store keeps values of at most {MAX_VALUE} bytes", value.len());
        }
        let manifest = Manifest::of(value);
        for (index, chunk) in value.chunks(CHUNK).enumerate() {
            let at = self.chunk_key(key, &manifest, index as u32);
            self.rpc("write", key, self.kv.clone().put(at, chunk, None)).await?;
        }
        // A cleanup deletes all of a generation's chunks in one request, so if chunk 0 (written
        // first) is still there, every later chunk is too.
        let whole = Compare::version(self.chunk_key(key, &manifest, 0), CompareOp::Greater, 0);
        Ok((manifest.encode(), vec![whole]))
    }

    /// Remove the chunks `old` points to, unless the value key holds that same generation
    /// again (another writer put the same content); one transaction, so that check holds.
    async fn forget(&self, key: &str, old: Option<&[u8]>, new: Option<&[u8]>) -> Result<()> {
        let Some(old) = old.filter(|old| Some(*old) != new) else { return Ok(()) };
        let Ok(Stored::Chunked(manifest)) = decode(old) else { return Ok(()) };
        let txn = Txn::new()
            .when([Compare::value(self.value_key(key), CompareOp::Equal, manifest.encode())])
            .or_else([TxnOp::delete(self.chunk_prefix(key, &manifest), Some(DeleteOptions::new().with_prefix()))]);
        self.rpc("clean up old chunks of", key, self.kv.clone().txn(txn)).await?;
        Ok(())
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        for _ in 0..ATTEMPTS {
            let (stored, whole) = self.prepare(key, value).await?;
            let txn = Txn::new().when(whole).and_then([TxnOp::put(self.value_key(key), stored.clone(), Some(PutOptions::new().with_prev_key()))]);
            let resp = self.rpc("write", key, self.kv.clone().txn(txn)).await?;
            if !resp.succeeded() {
                continue; // another writer's cleanup removed chunks as they were written
            }
            let old = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Put(p) => p.prev_key().map(|kv| kv.value().to_vec()),
                _ => None,
            });
            return self.forget(key, old.as_deref(), Some(&stored)).await;
        }
        bail!("`{key}` could not be written: its chunks kept being removed by other writers; retry")
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let resp = self.rpc("delete", key, self.kv.clone().delete(self.value_key(key), Some(DeleteOptions::new().with_prev_key()))).await?;
        let old = resp.prev_kvs().first().map(|kv| kv.value().to_vec());
        self.forget(key, old.as_deref(), None).await?;
        Ok(resp.deleted() > 0)
    }

    async fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool> {
        let vkey = self.value_key(key);
        let expected = expected.map(encode);
        let holds_expected = match &expected {
            Some(e) => Compare::value(vkey.as_str(), CompareOp::Equal, e.clone()),
            None => Compare::create_revision(vkey.as_str(), CompareOp::Equal, 0),
        };
        for _ in 0..ATTEMPTS {
            let (stored, whole) = self.prepare(key, value).await?;
            let txn = Txn::new()
                .when([vec![holds_expected.clone()], whole].concat())
                .and_then([TxnOp::put(vkey.as_str(), stored.clone(), None)])
                .or_else([TxnOp::get(vkey.as_str(), None)]);
            let resp = self.rpc("write", key, self.kv.clone().txn(txn)).await?;
            if resp.succeeded() {
                self.forget(key, expected.as_deref(), Some(&stored)).await?;
                return Ok(true);
            }
            let current = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            });
            if current != expected {
                // Someone else's value is there: drop the chunks this attempt wrote.
                self.forget(key, Some(&stored), current.as_deref()).await?;
                return Ok(false);
            }
            // It held what was expected, so it was the chunks that went missing: write again.
        }
        bail!("`{key}` could not be written: its chunks kept being removed by other writers; retry")
    }

    /// A prefix watch on value keys, once etcd has confirmed it (so later changes are seen).
    async fn open_watch(&self, prefix: &str) -> Result<WatchStream> {
        let mut stream = self.rpc("watch", prefix, self.watches.clone().watch(self.value_key(prefix), Some(WatchOptions::new().with_prefix()))).await?;
        let first = self.rpc("watch", prefix, stream.message()).await?;
        match first {
            Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
            _ => bail!("etcd at {} did not start a watch on `{prefix}`", self.endpoints),
        }
    }

    /// Forward changes until the receiver goes; when the stream fails or is compacted, watch
    /// again and send `Resync`, since changes in between may be lost.
    async fn follow(self: Arc<Self>, prefix: String, mut stream: WatchStream, tx: Sender<Change>) {
        loop {
            if self.forward(&mut stream, &tx).await.is_ok() {
                return; // the receiver is gone
            }
            let mut pause = Duration::from_millis(100);
            stream = loop {
                tokio::time::sleep(pause).await;
                if let Ok(stream) = self.open_watch(&prefix).await {
                    break stream;
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            };
            if tx.send(Change::Resync).is_err() {
                return;
            }
        }
    }

    /// `Ok` once the receiver is gone; an error when the watch must be made again.
    async fn forward(&self, stream: &mut WatchStream, tx: &Sender<Change>) -> Result<()> {
        let strip = self.value_key("");
        while let Some(resp) = stream.message().await? {
            if resp.canceled() || resp.compact_revision() != 0 {
                bail!("the watch was cancelled: {}", resp.cancel_reason());
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(&strip)) else { continue };
                let change = match event.event_type() {
                    // Chunks as of this event: a later overwrite may already have removed them.
                    EventType::Put => Change::Put { key: key.to_string(), value: self.value(key, kv.value(), kv.mod_revision()).await? },
                    EventType::Delete => Change::Delete { key: key.to_string() },
                };
                if tx.send(change).is_err() {
                    return Ok(());
                }
            }
        }
        bail!("the watch stream ended")
    }
}

impl ControlStore for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        let (inner, key) = (self.inner.clone(), key.to_string());
        self.run(async move { inner.get(&key).await })
    }

    fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let (inner, prefix) = (self.inner.clone(), prefix.to_string());
        self.run(async move { inner.keys(&prefix).await })
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        check_key(key)?;
        let (inner, key, value) = (self.inner.clone(), key.to_string(), value.to_vec());
        self.run(async move { inner.put(&key, &value).await })
    }

    fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        let (inner, key) = (self.inner.clone(), key.to_string());
        self.run(async move { inner.delete(&key).await })
    }

    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool> {
        check_key(key)?;
        let (inner, key, expected, value) = (self.inner.clone(), key.to_string(), expected.map(<[u8]>::to_vec), value.to_vec());
        self.run(async move { inner.compare_and_swap(&key, expected.as_deref(), &value).await })
    }

    fn watch(&self, prefix: &str) -> Result<Option<Watch>> {
        let (inner, prefix) = (self.inner.clone(), prefix.to_string());
        let (tx, rx) = std::sync::mpsc::channel();
        self.run(async move {
            let stream = inner.open_watch(&prefix).await?;
            tokio::spawn(inner.follow(prefix, stream, tx));
            Ok(())
        })?;
        Ok(Some(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_stored_inline_and_read_back() {
        for value in [&b""[..], b"{}", &[7u8; INLINE_MAX]] {
            let stored = encode(value);
            assert_eq!(stored[0], INLINE);
            assert_eq!(decode(&stored).unwrap(), Stored::Inline(value));
        }
    }

    #[test]
    fn large_values_become_a_manifest_that_depends_only_on_their_content() {
        let big: Vec<u8> = (0..INLINE_MAX as u32 * 5).map(|i| (i % 251) as u8).collect();
        let stored = encode(&big);
        assert_eq!(stored, encode(&big.clone()), "deterministic, so compare-and-swap can compare it");
        assert_eq!(stored.len(), 45);
        let Stored::Chunked(manifest) = decode(&stored).unwrap() else { panic!("chunked") };
        assert_eq!(manifest, Manifest::of(&big));
        assert_eq!((manifest.len, manifest.chunks), (big.len() as u64, 3), "2.5 MiB is three 1 MiB chunks");
        assert_eq!(manifest.hex().len(), 64);

        let just_over = vec![0u8; INLINE_MAX + 1];
        assert!(matches!(decode(&encode(&just_over)).unwrap(), Stored::Chunked(Manifest { chunks: 1, .. })));
    }

    #[test]
    fn bytes_this_store_did_not_write_are_refused() {
        assert!(decode(b"").is_err());
        assert!(decode(b"\x02abc").is_err());
        assert!(decode(&Manifest::of(b"x").encode()[..44]).is_err(), "a short manifest");
        let forged = Manifest { sha256: [0; 32], len: u64::MAX, chunks: u32::MAX }.encode();
        assert!(decode(&forged).unwrap_err().to_string().contains("at most"), "a forged size is refused before anything is sized by it");
        let inconsistent = Manifest { sha256: [0; 32], len: 3 << 20, chunks: 1 }.encode();
        assert!(decode(&inconsistent).is_err());
    }

    #[test]
    fn chunk_keys_cannot_fall_under_another_keys_chunks() {
        // A chunk prefix holds `//`, which no key can.
        assert!(check_key("a//b").is_err());
    }
}
