//! Images without a registry: the image is moved from the engine of the
//! machine running seedcore to a host's engine, carrying only the layers
//! that host lacks.
//!
//! How: the source engine's `docker save` stream is read twice. The first
//! pass reads its `manifest.json` (the layers' order) and each layer's size,
//! skipping contents. The second pass is forwarded to the target's `docker
//! load` with three edits: the layer tars the target already has (by chain
//! ID) are left out (the engine's loader only opens a layer it lacks), the
//! `repositories` file is dropped and `manifest.json` carries no tags, so
//! that nothing is tagged until seedcore has checked the image ID on arrival
//! and tags it itself. An interrupted transfer therefore leaves no image
//! under its configured name. Nothing is written to the target's disk
//! besides what its engine stores.

use crate::model::hex;
use bytes_stream::ChannelReader;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::{Read, Write};

/// The chain IDs of a layer stack: `chain(1) = diff(1)`,
/// `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex(&Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// One layer of the source image, in stack order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedLayer {
    pub diff_id: String,
    pub chain_id: String,
    /// Its tar's path in the `docker save` stream.
    pub path: String,
    /// Bytes of that tar.
    pub bytes: u64,
}

/// The source image as its `docker save` stream lays it out.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceImage {
    pub image: String,
    /// The cluster host it is relayed from; `None`: this machine's engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The image ID (`sha256:...`), checked on arrival.
    pub id: String,
    pub layers: Vec<SavedLayer>,
    /// Bytes of everything else (configs, manifest): always sent.
    pub other_bytes: u64,
    /// Small entries kept from the first pass (the config, the manifest,
    /// layers up to [`KEEP_BYTES`] in all): a host that lacks only those
    /// gets them without a second `docker save`.
    #[serde(skip)]
    pub kept: Kept,
    /// Whether every entry but the layers was kept whole (else a host is
    /// always sent the second pass).
    #[serde(skip)]
    pub kept_whole: bool,
}

/// How many bytes of small layers the first pass keeps in memory.
pub const KEEP_BYTES: u64 = 64 * 1024 * 1024;

/// Entries of a `docker save` stream held in memory, by path.
#[derive(Clone, Default)]
pub struct Kept(pub std::sync::Arc<std::collections::BTreeMap<String, Vec<u8>>>);

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.0.keys().eq(other.0.keys())
    }
}
impl Eq for Kept {}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v.len())))
            .finish()
    }
}

impl SourceImage {
    /// The layers a host lacks, given the chain IDs it has.
    pub fn missing<'a>(
        &'a self,
        has: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = &'a SavedLayer> {
        self.layers.iter().filter(|l| !has.contains(&l.chain_id))
    }

    /// Bytes a transfer to such a host sends (tar framing included, roughly).
    pub fn bytes_for(&self, has: &BTreeSet<String>) -> u64 {
        self.other_bytes
            + self
                .missing(has)
                .map(|l| l.bytes.div_ceil(512) * 512 + 512)
                .sum::<u64>()
    }
}

#[derive(serde::Deserialize, serde::Serialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// Pass one: the layers' order (from `manifest.json`) and sizes (from the
/// tar headers), contents skipped. `diff_ids` are the image's, in order.
pub fn index_save(
    read: impl Read,
    image: &str,
    id: &str,
    diff_ids: &[String],
) -> Result<SourceImage, String> {
    let mut archive = tar::Archive::new(read);
    let mut sizes = std::collections::BTreeMap::new();
    let mut manifest: Option<Vec<ManifestEntry>> = None;
    let mut other = 0u64;
    let mut kept = std::collections::BTreeMap::new();
    let mut budget = KEEP_BYTES;
    let mut whole = true;
    let entries = archive
        .entries()
        .map_err(|e| format!("cannot read the image archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("cannot read the image archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("a path in the image archive: {e}"))?
            .to_string_lossy()
            .to_string();
        let size = entry.header().size().unwrap_or(0);
        if path == "manifest.json" {
            let mut text = Vec::new();
            entry
                .by_ref()
                .take(1 << 20)
                .read_to_end(&mut text)
                .map_err(|e| format!("cannot read manifest.json: {e}"))?;
            manifest = Some(
                serde_json::from_slice(&text)
                    .map_err(|e| format!("cannot read manifest.json: {e}"))?,
            );
            kept.insert(path, text);
            other += size.div_ceil(512) * 512 + 512;
        } else if path.ends_with(".tar") || path.starts_with("blobs/") {
            if size <= budget {
                let mut bytes = Vec::with_capacity(size as usize);
                entry
                    .by_ref()
                    .read_to_end(&mut bytes)
                    .map_err(|e| format!("cannot read the image archive: {e}"))?;
                budget -= size;
                kept.insert(path.clone(), bytes);
            }
            sizes.insert(path, size);
        } else if path.ends_with("/VERSION")
            || path.ends_with("/json")
            || path.ends_with('/')
            || path == "repositories"
        {
            // Not sent (see `filter_save`).
        } else {
            let mut bytes = Vec::new();
            entry
                .by_ref()
                .take(1 << 20)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read the image archive: {e}"))?;
            whole &= bytes.len() as u64 == size;
            kept.insert(path, bytes);
            other += size.div_ceil(512) * 512 + 512;
        }
    }
    let manifest = manifest.ok_or("the image archive has no manifest.json")?;
    let entry = manifest
        .first()
        .ok_or("the image archive's manifest.json is empty")?;
    if entry.layers.len() != diff_ids.len() {
        return Err(format!(
            "the image archive lists {} layers, its image {}",
            entry.layers.len(),
            diff_ids.len()
        ));
    }
    let chains = chain_ids(diff_ids);
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids.iter().zip(chains))
        .map(|(path, (diff, chain))| SavedLayer {
            diff_id: diff.clone(),
            chain_id: chain,
            path: path.clone(),
            bytes: sizes.get(path).copied().unwrap_or(0),
        })
        .collect();
    // Blobs that are not layers (an OCI layout's configs) are sent too.
    let layer_paths: BTreeSet<&String> = entry.layers.iter().collect();
    whole &= sizes
        .keys()
        .all(|p| layer_paths.contains(p) || kept.contains_key(p));
    other += sizes
        .iter()
        .filter(|(p, _)| !layer_paths.contains(p))
        .map(|(_, s)| s + 512)
        .sum::<u64>();
    Ok(SourceImage {
        image: image.to_string(),
        id: id.to_string(),
        from: None,
        layers,
        other_bytes: other + 1024,
        kept: Kept(std::sync::Arc::new(kept)),
        kept_whole: whole,
    })
}

/// Pass two: copies a `docker save` stream, leaving out the layer tars in
/// `drop` and `repositories`, and emptying `manifest.json`'s tags. Returns
/// the bytes written.
pub fn filter_save(
    read: impl Read,
    write: impl Write,
    drop: &BTreeSet<String>,
) -> Result<u64, String> {
    let mut counter = Counting { inner: write, n: 0 };
    let dropped_dirs: Vec<String> = drop
        .iter()
        .filter_map(|p| p.strip_suffix("/layer.tar"))
        .map(str::to_string)
        .collect();
    {
        let mut out = tar::Builder::new(&mut counter);
        let mut archive = tar::Archive::new(read);
        let entries = archive
            .entries()
            .map_err(|e| format!("cannot read the image archive: {e}"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| format!("cannot read the image archive: {e}"))?;
            let path = entry
                .path()
                .map_err(|e| format!("a path in the image archive: {e}"))?
                .to_string_lossy()
                .to_string();
            // Left out: the layers the target has (with their legacy
            // directory), the legacy v1 files (`VERSION`, `json`) the loader
            // does not read when `manifest.json` exists, and the files that
            // would tag the image (`repositories`, `index.json`).
            let legacy = path.ends_with("/VERSION") || path.ends_with("/json");
            let in_dropped_dir = dropped_dirs.iter().any(|d| {
                path == *d
                    || path
                        .strip_prefix(d.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            });
            if drop.contains(&path)
                || legacy
                || in_dropped_dir
                || path == "repositories"
                || path == "index.json"
            {
                continue;
            }
            let mut header = entry.header().clone();
            if path == "manifest.json" {
                let mut text = Vec::new();
                entry
                    .by_ref()
                    .take(1 << 20)
                    .read_to_end(&mut text)
                    .map_err(|e| format!("cannot read manifest.json: {e}"))?;
                let mut manifest: Vec<ManifestEntry> = serde_json::from_slice(&text)
                    .map_err(|e| format!("cannot read manifest.json: {e}"))?;
                for m in &mut manifest {
                    m.repo_tags = None;
                }
                let text = serde_json::to_vec(&manifest).expect("a manifest serializes");
                header.set_size(text.len() as u64);
                header.set_cksum();
                out.append(&header, text.as_slice())
                    .map_err(|e| format!("cannot send the image: {e}"))?;
            } else {
                out.append(&header, &mut entry)
                    .map_err(|e| format!("cannot send the image: {e}"))?;
            }
        }
        out.finish()
            .map_err(|e| format!("cannot send the image: {e}"))?;
    }
    counter
        .flush()
        .map_err(|e| format!("cannot send the image: {e}"))?;
    Ok(counter.n)
}

/// The layer files a host need not be sent: those whose every use (one file
/// can hold several positions of the stack, e.g. empty layers in an OCI
/// layout) is a chain the host has.
pub fn droppable(src: &SourceImage, has: &BTreeSet<String>) -> BTreeSet<String> {
    let needed: BTreeSet<&String> = src
        .layers
        .iter()
        .filter(|l| !has.contains(&l.chain_id))
        .map(|l| &l.path)
        .collect();
    src.layers
        .iter()
        .filter(|l| has.contains(&l.chain_id) && !needed.contains(&l.path))
        .map(|l| l.path.clone())
        .collect()
}

/// The stream for a host that lacks only kept layers, from memory: every
/// kept entry but the layers it has, `manifest.json` without tags. `None`
/// when a missing layer was not kept.
pub fn from_kept(src: &SourceImage, has: &BTreeSet<String>) -> Option<Vec<u8>> {
    let kept = &src.kept.0;
    if !src.kept_whole {
        return None;
    }
    kept.get("manifest.json")?;
    let missing: Vec<&SavedLayer> = src.missing(has).collect();
    if missing.iter().any(|l| !kept.contains_key(&l.path)) {
        return None;
    }
    let layer_paths: BTreeSet<&String> = src.layers.iter().map(|l| &l.path).collect();
    let missing_paths: BTreeSet<&String> = missing.iter().map(|l| &l.path).collect();
    let mut input = tar::Builder::new(Vec::new());
    for (path, bytes) in kept.iter() {
        if layer_paths.contains(path) && !missing_paths.contains(path) {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        input.append_data(&mut h, path, bytes.as_slice()).ok()?;
    }
    let input = input.into_inner().ok()?;
    let mut out = Vec::new();
    filter_save(input.as_slice(), &mut out, &BTreeSet::new()).ok()?;
    Some(out)
}

struct Counting<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Blocking `Read`/`Write` over channels, to run the tar passes in a
/// blocking thread between two async streams.
pub mod bytes_stream {
    use std::io::{Read, Write};

    /// Reads the chunks a channel delivers; an `Err` chunk is an I/O error.
    pub struct ChannelReader {
        pub rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
        pub buf: Vec<u8>,
        pub pos: usize,
    }

    impl Read for ChannelReader {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            while self.pos >= self.buf.len() {
                match self.rx.blocking_recv() {
                    Some(Ok(chunk)) => {
                        self.buf = chunk;
                        self.pos = 0;
                    }
                    Some(Err(e)) => return Err(std::io::Error::other(e)),
                    None => return Ok(0),
                }
            }
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// Sends what is written as chunks (of at least 256 KiB, but the last).
    pub struct ChannelWriter {
        pub tx: tokio::sync::mpsc::Sender<Vec<u8>>,
        pub buf: Vec<u8>,
    }

    impl Write for ChannelWriter {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= 256 * 1024 {
                self.flush()?;
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            if !self.buf.is_empty() {
                let chunk = std::mem::take(&mut self.buf);
                self.tx
                    .blocking_send(chunk)
                    .map_err(|_| std::io::Error::other("the target stopped reading"))?;
            }
            Ok(())
        }
    }
}

/// Feeds an async byte stream into a channel a [`ChannelReader`] reads.
async fn pump<S, E>(mut stream: S, tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, String>>)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        let item = chunk.map(|b| b.to_vec()).map_err(|e| e.to_string());
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            break;
        }
    }
}

/// Pass one against an engine: the image's layout in its `docker save`.
pub async fn index(source: &bollard::Docker, image: &str) -> Result<SourceImage, String> {
    let inspect = source
        .inspect_image(image)
        .await
        .map_err(|e| format!("the image `{image}` at its source: {e}"))?;
    let id = inspect.id.unwrap_or_default();
    let diff_ids: Vec<String> = inspect.root_fs.and_then(|r| r.layers).unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let reader = ChannelReader {
        rx,
        buf: Vec::new(),
        pos: 0,
    };
    let image_name = image.to_string();
    let id2 = id.clone();
    let parse =
        tokio::task::spawn_blocking(move || index_save(reader, &image_name, &id2, &diff_ids));
    // By ID: the tag may move meanwhile; the ID is what is checked on arrival.
    pump(Box::pin(source.export_image(&id)), tx).await;
    parse
        .await
        .map_err(|e| format!("indexing `{image}`: {e}"))?
}

/// The chain IDs of every layer stack an engine has.
pub async fn chains_on(engine: &bollard::Docker) -> Result<BTreeSet<String>, String> {
    let images = engine
        .list_images(Some(bollard::query_parameters::ListImagesOptions {
            all: false,
            ..Default::default()
        }))
        .await
        .map_err(|e| format!("listing images: {e}"))?;
    let mut out = BTreeSet::new();
    for i in images.iter().take(500) {
        if let Ok(inspect) = engine.inspect_image(&i.id).await {
            let diffs = inspect.root_fs.and_then(|r| r.layers).unwrap_or_default();
            out.extend(chain_ids(&diffs));
        }
    }
    Ok(out)
}

/// Pass two: moves the image to `target`, without the layers it has; checks
/// the image ID, then tags it as `image`. Returns the bytes sent.
pub async fn push(
    source: &bollard::Docker,
    target: &bollard::Docker,
    src: &SourceImage,
    has: &BTreeSet<String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, String> {
    use futures_util::StreamExt;
    if let Some(bytes) = from_kept(src, has) {
        let n = bytes.len() as u64;
        let body =
            futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
        let mut answers = Box::pin(target.import_image_stream(
            bollard::query_parameters::ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            body,
            None,
        ));
        while let Some(a) = answers.next().await {
            if let Err(e) = a {
                return Err(format!("the target refused the image: {e}"));
            }
        }
        progress(n);
        return finish_push(target, src, n).await;
    }
    let drop = droppable(src, has);
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(16);
    let reader = ChannelReader {
        rx: in_rx,
        buf: Vec::new(),
        pos: 0,
    };
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let writer = bytes_stream::ChannelWriter {
        tx: out_tx,
        buf: Vec::new(),
    };
    let filter = tokio::task::spawn_blocking(move || filter_save(reader, writer, &drop));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sent2 = sent.clone();
    let body = async_stream_of(move || {
        let chunk = out_rx.blocking_recv();
        if let Some(c) = &chunk {
            sent2.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        chunk
    });
    let feed = pump(Box::pin(source.export_image(&src.id)), in_tx);
    let load = async {
        let mut answers = Box::pin(target.import_image_stream(
            bollard::query_parameters::ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            body,
            None,
        ));
        let mut last = String::new();
        while let Some(a) = answers.next().await {
            match a {
                Ok(info) => {
                    if let Some(s) = info.stream {
                        last = s;
                    }
                }
                Err(e) => return Err(format!("the target refused the image: {e}")),
            }
        }
        Ok(last)
    };
    // Progress every two seconds while the bytes flow.
    let ticker = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            progress(sent.load(std::sync::atomic::Ordering::Relaxed));
        }
    };
    let (_, loaded) = tokio::select! {
        r = async { tokio::join!(feed, load) } => r,
        _ = ticker => unreachable!("the ticker never ends"),
    };
    let written = filter
        .await
        .map_err(|e| format!("sending `{}`: {e}", src.image))??;
    loaded?;
    progress(written);
    finish_push(target, src, written).await
}

/// Checks the image ID on arrival, then tags the image as configured.
async fn finish_push(
    target: &bollard::Docker,
    src: &SourceImage,
    written: u64,
) -> Result<u64, String> {
    // Checked on arrival, tagged only then.
    let arrived = target
        .inspect_image(&src.id)
        .await
        .map_err(|e| format!("`{}` did not arrive whole: {e}", src.image))?;
    if arrived.id.as_deref() != Some(src.id.as_str()) {
        return Err(format!(
            "`{}` arrived as {}, expected {}",
            src.image,
            arrived.id.unwrap_or_default(),
            src.id
        ));
    }
    let (repo, tag) = split_reference(&src.image);
    target
        .tag_image(
            &src.id,
            Some(bollard::query_parameters::TagImageOptions {
                repo: Some(repo),
                tag: Some(tag),
            }),
        )
        .await
        .map_err(|e| format!("tagging `{}`: {e}", src.image))?;
    Ok(written)
}

/// Builds `[cluster.build]` on this machine's engine, tagged `image`.
pub async fn build(
    engine: &bollard::Docker,
    build: &crate::config::BuildConfig,
    image: &str,
) -> Result<(), String> {
    use futures_util::StreamExt;
    let context = build.context.clone();
    let tar = tokio::task::spawn_blocking(move || {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(".", &context)?;
        b.into_inner()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot read the build context: {e}"))?;
    let mut answers = engine.build_image(
        bollard::query_parameters::BuildImageOptions {
            dockerfile: build.dockerfile.clone(),
            t: Some(image.to_string()),
            rm: true,
            buildargs: Some(build.args.clone().into_iter().collect()),
            ..Default::default()
        },
        None,
        Some(bollard::body_full(tar.into())),
    );
    let mut tail: Vec<String> = Vec::new();
    while let Some(a) = answers.next().await {
        match a {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(format!(
                        "{}\n{}",
                        crate::model::excerpt(&e, 400),
                        tail.join("")
                    ));
                }
                if let Some(s) = info.stream {
                    tail.push(crate::model::bounded(&s, 300));
                    if tail.len() > 10 {
                        tail.remove(0);
                    }
                }
            }
            Err(e) => {
                return Err(format!(
                    "{}\n{}",
                    crate::model::excerpt(&e.to_string(), 400),
                    tail.join("")
                ))
            }
        }
    }
    Ok(())
}

/// A stream of chunks pulled by a blocking function on a blocking thread.
fn async_stream_of<F>(
    mut next: F,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static
where
    F: FnMut() -> Option<Vec<u8>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    std::thread::spawn(move || {
        while let Some(chunk) = next() {
            if tx.blocking_send(Ok(bytes::Bytes::from(chunk))).is_err() {
                break;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// `repo:tag` (a digest-pinned reference keeps its repository, tag `latest`
/// never applies to it: such references are refused for push by validation).
pub fn split_reference(image: &str) -> (String, String) {
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (
            image[..last_slash + i].to_string(),
            image[last_slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_docker() {
        let d = vec!["sha256:aa".to_string(), "sha256:bb".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:aa");
        assert_eq!(
            c[1],
            format!("sha256:{}", hex(&Sha256::digest(b"sha256:aa sha256:bb")))
        );
    }

    #[test]
    fn a_file_used_twice_is_dropped_only_when_both_uses_are_had() {
        let diffs = vec![
            "sha256:e".to_string(),
            "sha256:a".to_string(),
            "sha256:e".to_string(),
        ];
        let chains = chain_ids(&diffs);
        let src = SourceImage {
            layers: diffs
                .iter()
                .zip(&chains)
                .map(|(d, c)| SavedLayer {
                    diff_id: d.clone(),
                    chain_id: c.clone(),
                    path: format!("blobs/sha256/{}", &d[7..]),
                    bytes: 10,
                })
                .collect(),
            ..Default::default()
        };
        let first_two: BTreeSet<String> = chains[..2].iter().cloned().collect();
        // The empty layer is had at position 1 but needed at position 3.
        assert_eq!(
            droppable(&src, &first_two),
            ["blobs/sha256/a".to_string()].into()
        );
        let all: BTreeSet<String> = chains.iter().cloned().collect();
        assert_eq!(droppable(&src, &all).len(), 2);
    }

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(
            split_reference("seedcore-ray:lab"),
            ("seedcore-ray".into(), "lab".into())
        );
        assert_eq!(
            split_reference("localhost:5000/ray/x:2.60"),
            ("localhost:5000/ray/x".into(), "2.60".into())
        );
        assert_eq!(split_reference("ray"), ("ray".into(), "latest".into()));
    }

    fn archive() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        };
        add("aaa/VERSION", b"1.0");
        add("aaa/json", b"{}");
        add("aaa/layer.tar", &[1u8; 3000]);
        add("bbb/VERSION", b"1.0");
        add("bbb/json", b"{}");
        add("bbb/layer.tar", &[2u8; 100]);
        add("cfg.json", b"{}");
        add(
            "manifest.json",
            br#"[{"Config":"cfg.json","RepoTags":["x:1"],"Layers":["bbb/layer.tar","aaa/layer.tar"]}]"#,
        );
        add("repositories", br#"{"x":{"1":"bbb"}}"#);
        b.into_inner().unwrap()
    }

    #[test]
    fn a_save_is_indexed_and_filtered_without_tags() {
        let diffs = vec!["sha256:d1".to_string(), "sha256:d2".to_string()];
        let src = index_save(archive().as_slice(), "x:1", "sha256:cfg", &diffs).unwrap();
        assert_eq!(src.layers[0].path, "bbb/layer.tar");
        assert_eq!(src.layers[0].bytes, 100);
        assert_eq!(src.layers[1].bytes, 3000);
        let has: BTreeSet<String> = [src.layers[0].chain_id.clone()].into();
        assert_eq!(src.missing(&has).count(), 1);
        let drop: BTreeSet<String> = ["bbb/layer.tar".to_string()].into();
        let mut out = Vec::new();
        let n = filter_save(archive().as_slice(), &mut out, &drop).unwrap();
        assert_eq!(n as usize, out.len());
        let mut a = tar::Archive::new(out.as_slice());
        let mut names = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().to_string();
            if p == "manifest.json" {
                let mut t = String::new();
                e.read_to_string(&mut t).unwrap();
                assert!(!t.contains("x:1"), "{t}");
                assert!(t.contains("bbb/layer.tar"), "{t}");
            }
            names.push(p);
        }
        assert_eq!(names, ["aaa/layer.tar", "cfg.json", "manifest.json"]);
        // Both layers are small: kept, and a host lacking only the second
        // gets it from memory, with the config and an untagged manifest.
        let mut names = Vec::new();
        let memory = from_kept(&src, &has).expect("every missing layer was kept");
        for e in tar::Archive::new(memory.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().to_string();
            if p == "manifest.json" {
                let mut t = String::new();
                e.read_to_string(&mut t).unwrap();
                assert!(!t.contains("x:1"), "{t}");
            }
            names.push(p);
        }
        assert_eq!(names, ["aaa/layer.tar", "cfg.json", "manifest.json"]);
        // A config cut short: never sent from memory.
        let mut cut = src.clone();
        cut.kept_whole = false;
        assert!(from_kept(&cut, &has).is_none());
        // A missing layer that was not kept: streamed instead.
        let mut big = src.clone();
        let mut kept = (*big.kept.0).clone();
        kept.remove("aaa/layer.tar");
        big.kept = Kept(std::sync::Arc::new(kept));
        assert!(from_kept(&big, &has).is_none());
    }
}
