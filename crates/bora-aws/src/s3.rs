//! A model directory into S3, the way a multi-gigabyte upload over a hackathon's network
//! needs it: large files in parts, a broken run resumed from the parts S3 already holds, and
//! a file skipped when the object there has the same bytes.
//!
//! "The same bytes" is decided by S3's own ETag, which for an unencrypted or SSE-S3 object is
//! the MD5 of a single-part upload, or `MD5(MD5(part 1) ‖ … ‖ MD5(part n))-n` of a multipart
//! one. bora cuts a file into parts by a rule that depends on its size only
//! ([`UploadOptions::part_size_for`]), so it can compute the ETag its own upload would have and
//! compare; an object uploaded another way (other part sizes, SSE-KMS) is uploaded again,
//! never wrongly skipped. A resumed upload keeps a part only when its size and MD5 are those
//! of the local part, and every part is sent with its `Content-MD5`, so S3 rejects a part
//! damaged on the way.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use md5::{Digest, Md5};

use crate::error::{io_error, sdk_error, AwsError, Result};
use crate::Aws;

/// The smallest part S3 accepts (all but the last part of an upload).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// The most parts one upload may have.
const MAX_PARTS: u64 = 10_000;

/// `s3://BUCKET/PREFIX`: where the model's files go, `PREFIX/NAME` each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
}

impl std::str::FromStr for S3Location {
    type Err = AwsError;

    fn from_str(uri: &str) -> Result<S3Location> {
        let bad = || AwsError::S3Uri {
            uri: uri.to_owned(),
        };
        let rest = uri.strip_prefix("s3://").ok_or_else(bad)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(bad());
        }
        let prefix = prefix.trim_matches('/');
        Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }
}

impl std::fmt::Display for S3Location {
    /// The folder URI Custom Model Import takes: `s3://BUCKET/PREFIX/`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl S3Location {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    /// Files up to this size go in one `PutObject`; larger ones in parts of this size.
    pub part_size: u64,
}

impl Default for UploadOptions {
    /// 64 MiB parts: 10 000 parts reach 640 GiB, beyond any model Bedrock imports.
    fn default() -> Self {
        UploadOptions {
            part_size: 64 * 1024 * 1024,
        }
    }
}

impl UploadOptions {
    /// The part size for a file of `size` bytes: the configured one, raised where needed so
    /// the file fits in S3's 10 000 parts. Depends on nothing but the size, so a later run
    /// cuts the same file the same way.
    pub fn part_size_for(&self, size: u64) -> u64 {
        self.part_size.max(size.div_ceil(MAX_PARTS))
    }
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOutcome {
    /// The object was already there with the same bytes.
    Skipped,
    /// Sent in one request.
    Uploaded,
    /// Sent in parts; `kept` of them were already in S3 from an earlier, unfinished run.
    Multipart { parts: usize, kept: usize },
}

/// Progress of [`Aws::upload_dir`].
#[derive(Debug, Clone, Copy)]
pub enum UploadEvent<'a> {
    /// One part of a multipart file is in S3.
    Part {
        name: &'a str,
        part: usize,
        parts: usize,
    },
    /// A file is done.
    File {
        name: &'a str,
        size: u64,
        outcome: FileOutcome,
    },
}

/// A local file cut into parts, with the MD5 of each and the ETag S3 will give it.
struct LocalFile {
    path: PathBuf,
    size: u64,
    part_size: u64,
    part_md5: Vec<[u8; 16]>,
    etag: String,
}

impl LocalFile {
    fn read(path: &Path, options: &UploadOptions) -> Result<LocalFile> {
        let mut file = File::open(path).map_err(io_error(path))?;
        let size = file.metadata().map_err(io_error(path))?.len();
        let part_size = options.part_size_for(size);
        let mut part_md5 = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut remaining = size;
        loop {
            let mut hasher = Md5::new();
            let mut left = part_size.min(remaining);
            while left > 0 {
                let n = buf.len().min(left as usize);
                file.read_exact(&mut buf[..n]).map_err(io_error(path))?;
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            let mut digest = [0u8; 16];
            digest.copy_from_slice(&hasher.finalize());
            part_md5.push(digest);
            remaining -= part_size.min(remaining);
            if remaining == 0 {
                break;
            }
        }
        let etag = if size <= part_size {
            hex(&part_md5[0])
        } else {
            let mut whole = Md5::new();
            for d in &part_md5 {
                whole.update(d);
            }
            format!("{}-{}", hex(&whole.finalize()), part_md5.len())
        };
        Ok(LocalFile {
            path: path.to_path_buf(),
            size,
            part_size,
            part_md5,
            etag,
        })
    }

    fn single_part(&self) -> bool {
        self.size <= self.part_size
    }

    /// Part `i` (0-based): its bytes, read from disk.
    fn part(&self, i: usize) -> Result<Vec<u8>> {
        let start = i as u64 * self.part_size;
        let len = self.part_size.min(self.size - start) as usize;
        let mut file = File::open(&self.path).map_err(io_error(&self.path))?;
        file.seek(SeekFrom::Start(start))
            .map_err(io_error(&self.path))?;
        let mut bytes = vec![0u8; len];
        file.read_exact(&mut bytes).map_err(io_error(&self.path))?;
        Ok(bytes)
    }

    fn part_len(&self, i: usize) -> u64 {
        self.part_size.min(self.size - i as u64 * self.part_size)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn content_md5(digest: &[u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

fn unquote(etag: &str) -> &str {
    etag.trim_matches('"')
}

impl Aws {
    fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::new(&self.config)
    }

    /// Uploads `files` (names inside `dir`) to `dest`, in order; returns each file's outcome.
    pub fn upload_dir(
        &self,
        dir: &Path,
        files: &[String],
        dest: &S3Location,
        options: &UploadOptions,
        on_event: &mut dyn FnMut(UploadEvent<'_>),
    ) -> Result<Vec<FileOutcome>> {
        let client = self.s3();
        let mut outcomes = Vec::with_capacity(files.len());
        for name in files {
            let local = LocalFile::read(&dir.join(name), options)?;
            let key = dest.key(name);
            let outcome = self.block_on(upload_file(
                &client,
                &dest.bucket,
                &key,
                name,
                &local,
                on_event,
            ))?;
            on_event(UploadEvent::File {
                name,
                size: local.size,
                outcome,
            });
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

async fn upload_file(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    name: &str,
    local: &LocalFile,
    on_event: &mut dyn FnMut(UploadEvent<'_>),
) -> Result<FileOutcome> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(head) => {
            let same_size = head.content_length() == Some(local.size as i64);
            if same_size && head.e_tag().map(unquote) == Some(local.etag.as_str()) {
                return Ok(FileOutcome::Skipped);
            }
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
        Err(e) => return Err(sdk_error("s3:GetObject (HeadObject)", e)),
    }
    if local.single_part() {
        let bytes = local.part(0)?;
        let put = client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_md5(content_md5(&local.part_md5[0]))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| sdk_error("s3:PutObject", e))?;
        check_etag(local, put.e_tag())?;
        return Ok(FileOutcome::Uploaded);
    }
    let (upload_id, existing) = match unfinished_upload(client, bucket, key).await? {
        Some(id) => {
            let parts = listed_parts(client, bucket, key, &id).await?;
            (id, parts)
        }
        None => {
            let created = client
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| sdk_error("s3:PutObject (CreateMultipartUpload)", e))?;
            let id = created.upload_id().ok_or_else(|| AwsError::Response {
                action: "s3:PutObject (CreateMultipartUpload)",
                what: "no UploadId".into(),
            })?;
            (id.to_owned(), HashMap::new())
        }
    };
    let parts = local.part_md5.len();
    let mut completed = Vec::with_capacity(parts);
    let mut kept = 0;
    for (i, md5) in local.part_md5.iter().enumerate() {
        let number = i as i32 + 1;
        let want = hex(md5);
        let etag = match existing.get(&number) {
            Some((size, etag)) if *size == local.part_len(i) && unquote(etag) == want => {
                kept += 1;
                etag.clone()
            }
            _ => {
                let sent = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_md5(content_md5(md5))
                    .body(ByteStream::from(local.part(i)?))
                    .send()
                    .await
                    .map_err(|e| sdk_error("s3:PutObject (UploadPart)", e))?;
                sent.e_tag()
                    .ok_or_else(|| AwsError::Response {
                        action: "s3:PutObject (UploadPart)",
                        what: format!("no ETag for part {number} of {key}"),
                    })?
                    .to_owned()
            }
        };
        completed.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(etag)
                .build(),
        );
        on_event(UploadEvent::Part {
            name,
            part: i + 1,
            parts,
        });
    }
    let done = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .map_err(|e| sdk_error("s3:PutObject (CompleteMultipartUpload)", e))?;
    check_etag(local, done.e_tag())?;
    Ok(FileOutcome::Multipart { parts, kept })
}

/// The ETag S3 reports must be the one computed locally; where S3 reports none (or one
/// that is not an MD5, as with SSE-KMS) the per-part `Content-MD5` checks stand alone.
fn check_etag(local: &LocalFile, got: Option<&str>) -> Result<()> {
    match got.map(unquote) {
        Some(got) if got != local.etag && looks_like_md5_etag(got) => Err(AwsError::Changed {
            path: local.path.clone(),
            expected: local.etag.clone(),
            got: got.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn looks_like_md5_etag(etag: &str) -> bool {
    let digest = etag.split('-').next().unwrap_or_default();
    digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The most recent unfinished multipart upload of exactly `key`, if any.
async fn unfinished_upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<String>> {
    let mut latest: Option<(aws_sdk_s3::primitives::DateTime, String)> = None;
    let mut key_marker: Option<String> = None;
    let mut id_marker: Option<String> = None;
    loop {
        let page = client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(key)
            .set_key_marker(key_marker.take())
            .set_upload_id_marker(id_marker.take())
            .send()
            .await
            .map_err(|e| sdk_error("s3:ListBucketMultipartUploads", e))?;
        for upload in page.uploads() {
            if upload.key() != Some(key) {
                continue;
            }
            let (Some(id), Some(when)) = (upload.upload_id(), upload.initiated()) else {
                continue;
            };
            if latest.as_ref().is_none_or(|(t, _)| when > t) {
                latest = Some((*when, id.to_owned()));
            }
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_owned);
        id_marker = page.next_upload_id_marker().map(str::to_owned);
        if key_marker.is_none() && id_marker.is_none() {
            break;
        }
    }
    Ok(latest.map(|(_, id)| id))
}

/// The parts an unfinished upload holds: number → (size, ETag).
async fn listed_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<HashMap<i32, (u64, String)>> {
    let mut parts = HashMap::new();
    let mut marker: Option<String> = None;
    loop {
        let page = client
            .list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .set_part_number_marker(marker.take())
            .send()
            .await
            .map_err(|e| sdk_error("s3:ListMultipartUploadParts", e))?;
        for p in page.parts() {
            if let (Some(n), Some(size), Some(etag)) = (p.part_number(), p.size(), p.e_tag()) {
                parts.insert(n, (size.max(0) as u64, etag.to_owned()));
            }
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        marker = page.next_part_number_marker().map(str::to_owned);
        if marker.is_none() {
            break;
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris() {
        let l: S3Location = "s3://my-bucket/models/run1/".parse().unwrap();
        assert_eq!(l.bucket, "my-bucket");
        assert_eq!(l.prefix, "models/run1/");
        assert_eq!(l.to_string(), "s3://my-bucket/models/run1/");
        assert_eq!(l.key("config.json"), "models/run1/config.json");
        let bare: S3Location = "s3://my-bucket".parse().unwrap();
        assert_eq!(bare.prefix, "");
        assert_eq!(bare.to_string(), "s3://my-bucket/");
        for bad in ["my-bucket/x", "s3://", "s3://A_B/x", "https://b/x"] {
            let e = bad.parse::<S3Location>().unwrap_err();
            assert!(e.to_string().contains("not an S3 location"), "{bad}: {e}");
        }
    }

    #[test]
    fn part_size_grows_to_fit_ten_thousand_parts() {
        let o = UploadOptions::default();
        assert_eq!(o.part_size_for(1), 64 << 20);
        let huge = 1u64 << 40;
        assert_eq!(o.part_size_for(huge), huge.div_ceil(10_000));
    }

    #[test]
    fn etags_are_computed_as_s3_computes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Empty: the MD5 of nothing.
        std::fs::write(&path, b"").unwrap();
        let o = UploadOptions {
            part_size: MIN_PART_SIZE,
        };
        let f = LocalFile::read(&path, &o).unwrap();
        assert_eq!(f.etag, "d41d8cd98f00b204e9800998ecf8427e");
        // "abc" in one part.
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            LocalFile::read(&path, &o).unwrap().etag,
            "900150983cd24fb0d6963f7d28e17f72"
        );
        // Two parts: MD5 of the two binary digests, then "-2".
        let data: Vec<u8> = (0..MIN_PART_SIZE + 3).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = LocalFile::read(&path, &o).unwrap();
        let a = Md5::digest(&data[..MIN_PART_SIZE as usize]);
        let b = Md5::digest(&data[MIN_PART_SIZE as usize..]);
        let mut both = a.to_vec();
        both.extend_from_slice(&b);
        assert_eq!(f.etag, format!("{}-2", hex(&Md5::digest(&both))));
        assert_eq!(f.part(1).unwrap(), data[MIN_PART_SIZE as usize..]);
    }
}
