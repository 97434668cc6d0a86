//! W&B artifacts: a directory logged as a versioned artifact of a run, used by a later run,
//! linked to a registry collection; the same requests wandb-core sends for
//! `run.log_artifact`, `run.use_artifact` and `run.link_artifact` (wandb 0.31).
//!
//! An artifact is versioned by content. Each file's digest is its MD5 in base64, and the
//! artifact's digest is the MD5 (hex) of `wandb-artifact-manifest-v1\n` followed by one
//! `NAME:DIGEST\n` line per file in name order. `CreateArtifact` sends that digest with
//! deduplication on: when the collection's latest version has the same digest, W&B answers
//! with that version, already committed, and nothing is uploaded; otherwise a new pending
//! version is made, its files and manifest uploaded, and only then `CommitArtifact` makes it
//! visible. A failure anywhere before the commit leaves a pending version that W&B never
//! shows, never a committed one with missing files.
//!
//! Files of [`MULTIPART_THRESHOLD`] or more go up in parts ([`MULTIPART_PART_SIZE`] each,
//! with each part's MD5 announced in `CreateArtifactFiles`), then
//! `CompleteMultipartUploadArtifact`; as wandb-core does. Every upload and GraphQL call is
//! retried on 5xx, 429 and dropped connections (bounded, with backoff), and a file W&B
//! already stores (same MD5) gets no upload URL and is not sent again, so a rerun after a
//! failure only sends what is missing.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::client::Client;
use super::run::{random_id, WandbRun};
use super::{Result, WandbError};
use crate::hub::{Body, HubClient, Req, Retry};

/// Files of this size or more are uploaded in parts, as wandb-core does (2 GiB).
pub const MULTIPART_THRESHOLD: u64 = 2 << 30;
/// The size of each part of a multipart upload, unless the file needs bigger parts to fit in
/// [`MULTIPART_MAX_PARTS`] (wandb-core: 100 MiB).
pub const MULTIPART_PART_SIZE: u64 = 100 << 20;
/// S3's limit on the parts of one upload.
const MULTIPART_MAX_PARTS: u64 = 10_000;

/// When a file goes up in parts, and how big they are: wandb-core's sizes by default; tests
/// make them small to send parts without gigabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Multipart {
    pub threshold: u64,
    pub part_size: u64,
}

impl Default for Multipart {
    fn default() -> Self {
        Self {
            threshold: MULTIPART_THRESHOLD,
            part_size: MULTIPART_PART_SIZE,
        }
    }
}

impl Multipart {
    /// The part size for a file of `size` bytes, `None` below the threshold.
    fn part_size_for(&self, size: u64) -> Option<u64> {
        (size >= self.threshold).then(|| {
            self.part_size
                .max(size.div_ceil(MULTIPART_MAX_PARTS))
                .max(1)
        })
    }
}

/// The run-directory file that records the artifacts logged from it, so a later command
/// (`bora eval`, `bora export`) can name them as inputs without asking W&B.
pub const ARTIFACTS_FILE: &str = "wandb-artifacts.json";

/// The first line of the text whose MD5 is an artifact's digest.
const MANIFEST_DIGEST_HEADER: &str = "wandb-artifact-manifest-v1\n";
const MANIFEST_FILE_NAME: &str = "wandb_manifest.json";

// The operations as wandb-core 0.31 sends them (`scripts/make_wandb_artifact_fixtures.py`
// records them; bora-hub's tests compare these texts with the recording).
const CREATE_ARTIFACT: &str = "
mutation CreateArtifact ($input: CreateArtifactInput!) {
\tcreateArtifact(input: $input) {
\t\t... CreatedArtifact
\t}
}
fragment CreatedArtifact on CreateArtifactPayload {
\tartifact {
\t\tid
\t\tstate
\t\tartifactSequence {
\t\t\tlatestArtifact {
\t\t\t\tid
\t\t\t}
\t\t}
\t}
}
";

const CREATE_ARTIFACT_MANIFEST: &str = "
mutation CreateArtifactManifest ($artifactID: ID!, $baseArtifactID: ID, $name: String!, \
$digest: String!, $entityName: String!, $projectName: String!, $runName: String!, \
$manifestType: ArtifactManifestType!, $includeUpload: Boolean!) {
\tcreateArtifactManifest(input: {artifactID:$artifactID,baseArtifactID:$baseArtifactID,\
name:$name,digest:$digest,entityName:$entityName,projectName:$projectName,runName:$runName,\
type:$manifestType}) {
\t\tartifactManifest {
\t\t\tid
\t\t\tfile {
\t\t\t\tid
\t\t\t\tuploadUrl @include(if: $includeUpload)
\t\t\t\tuploadHeaders @include(if: $includeUpload)
\t\t\t}
\t\t}
\t}
}
";

const CREATE_ARTIFACT_FILES: &str = "
mutation CreateArtifactFiles ($input: CreateArtifactFilesInput!) {
\tcreateArtifactFiles(input: $input) {
\t\tfiles {
\t\t\tedges {
\t\t\t\tnode {
\t\t\t\t\tstoragePath
\t\t\t\t\tuploadUrl
\t\t\t\t\tuploadHeaders
\t\t\t\t\tuploadMultipartUrls {
\t\t\t\t\t\tuploadID
\t\t\t\t\t\tuploadUrlParts {
\t\t\t\t\t\t\tpartNumber
\t\t\t\t\t\t\tuploadUrl
\t\t\t\t\t\t}
\t\t\t\t\t}
\t\t\t\t\tartifact {
\t\t\t\t\t\tid
\t\t\t\t\t}
\t\t\t\t}
\t\t\t}
\t\t}
\t}
}
";

const COMPLETE_MULTIPART_UPLOAD: &str = "
mutation CompleteMultipartUploadArtifact ($completeMultipartAction: CompleteMultipartAction!, \
$completedParts: [UploadPartsInput!]!, $artifactID: ID!, $storagePath: String!, \
$uploadID: String!) {
\tcompleteMultipartUploadArtifact(input: {completeMultipartAction:$completeMultipartAction,\
completedParts:$completedParts,artifactID:$artifactID,storagePath:$storagePath,\
uploadID:$uploadID}) {
\t\tdigest
\t}
}
";

const COMMIT_ARTIFACT: &str = "
mutation CommitArtifact ($artifactID: ID!) {
\tcommitArtifact(input: {artifactID:$artifactID}) {
\t\tartifact {
\t\t\tid
\t\t\tdigest
\t\t}
\t}
}
";

/// The Python side's lookup of a saved artifact (`Artifact.wait` after `run.log_artifact`):
/// the answer carries the version's `versionIndex`, the `vN` of its name.
const ARTIFACT_BY_ID: &str = "query ArtifactByID ($id: ID!, $includeAliases: Boolean = true) {
\tartifact(id: $id) {
\t\t... ArtifactFragment
\t}
}
fragment ArtifactAliasFragment on ArtifactAlias {
\t__typename
\tid
\talias
}
fragment ArtifactFragment on Artifact {
\t__typename
\tid
\tartifactSequence {
\t\t... SourceCollectionInfoFragment
\t}
\tversionIndex
\tartifactType {
\t\tname
\t}
\tdescription
\tmetadata
\tttlDurationSeconds
\tttlIsInherited
\ttags {
\t\t... TagFragment
\t}
\thistoryStep
\tstate
\tsize
\tdigest
\tcommitHash
\tfileCount
\tcreatedAt
\tupdatedAt
\taliases @include(if: $includeAliases) {
\t\tartifactCollection {
\t\t\t... CollectionInfoFragment
\t\t}
\t\t... ArtifactAliasFragment
\t}
}
fragment CollectionInfoFragment on ArtifactCollection {
\t__typename
\tname
\tproject {
\t\t... ProjectInfoFragment
\t}
}
fragment ProjectInfoFragment on Project {
\tid
\tinternalId
\tname
\tentity {
\t\tname
\t}
}
fragment SourceCollectionInfoFragment on ArtifactSequence {
\t__typename
\tname
\tproject {
\t\t... ProjectInfoFragment
\t}
}
fragment TagFragment on Tag {
\t__typename
\tid
\tname
}
";

const USE_ARTIFACT: &str = "
        mutation UseArtifact($entityName: String!, $projectName: String!, $runName: String!, \
$artifactID: ID!) {
            useArtifact(input: {entityName: $entityName, projectName: $projectName, \
runName: $runName, artifactID: $artifactID}) {
                artifact {
                    id
                    digest
                    description
                    state
                    createdAt
                    metadata
                }
            }
        }
        ";

const FETCH_ORG_INFO_FROM_ENTITY: &str = "
query FetchOrgInfoFromEntity($entity: String!) {
  entity(name: $entity) {
    organization {
      ...OrgInfoFragment
    }
    user {
      organizations {
        ...OrgInfoFragment
      }
    }
  }
}

fragment OrgInfoFragment on Organization {
  name
  orgEntity {
    name
  }
}
";

const LINK_ARTIFACT: &str = "mutation LinkArtifact ($input: LinkArtifactInput!) {
\tresult: linkArtifact(input: $input) {
\t\tversionIndex
\t}
}
";

/// One file of an artifact: its name in the artifact, where it is read from, and the digests
/// W&B checks it by.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactFile {
    /// The path inside the artifact, `/`-separated.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// MD5 of the whole file, base64: the manifest digest and the storage key.
    pub md5: String,
    /// MD5 (hex) of each part, for a file uploaded in parts; empty otherwise.
    pub part_md5s: Vec<String>,
    /// The size of each part but the last, for a file uploaded in parts.
    pub part_size: u64,
}

impl ArtifactFile {
    /// Reads `path` once, hashing the whole file and (for a large file) each part.
    pub fn hash(name: &str, path: &Path, multipart: &Multipart) -> Result<Self> {
        let io = |source| WandbError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let part_size = multipart.part_size_for(size);
        let mut whole = Md5::new();
        let mut part = Md5::new();
        let mut in_part = 0u64;
        let mut part_md5s = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            whole.update(&buf[..n]);
            if let Some(part_size) = part_size {
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let take = rest.len().min((part_size - in_part) as usize);
                    part.update(&rest[..take]);
                    in_part += take as u64;
                    rest = &rest[take..];
                    if in_part == part_size {
                        part_md5s.push(hex(&part.finalize_reset()));
                        in_part = 0;
                    }
                }
            }
        }
        if part_size.is_some() && in_part > 0 {
            part_md5s.push(hex(&part.finalize()));
        }
        Ok(Self {
            name: name.to_owned(),
            path: path.to_path_buf(),
            size,
            md5: base64::engine::general_purpose::STANDARD.encode(whole.finalize()),
            part_md5s,
            part_size: part_size.unwrap_or(size),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An artifact's files, in name order, as its manifest lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    files: Vec<ArtifactFile>,
}

impl Manifest {
    /// Every regular file under `dir` (recursively), named by its path relative to `dir`;
    /// `prefix` (if not empty) goes before each name.
    pub fn from_dir(dir: &Path, prefix: &str, multipart: &Multipart) -> Result<Self> {
        let mut files = Vec::new();
        collect_files(dir, prefix, multipart, &mut files)?;
        if files.is_empty() {
            return Err(WandbError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no files to log"),
            });
        }
        Ok(Self::from_files(files))
    }

    pub fn from_files(mut files: Vec<ArtifactFile>) -> Self {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Self { files }
    }

    pub fn files(&self) -> &[ArtifactFile] {
        &self.files
    }

    /// The artifact's digest, as wandb computes it (`ArtifactManifestV1.digest`).
    pub fn digest(&self) -> String {
        let mut md5 = Md5::new();
        md5.update(MANIFEST_DIGEST_HEADER.as_bytes());
        for f in &self.files {
            md5.update(format!("{}:{}\n", f.name, f.md5).as_bytes());
        }
        hex(&md5.finalize())
    }

    /// `wandb_manifest.json` for the version `artifact_id`, as wandb-core writes it less the
    /// `local_path` of each file (a path on this machine, which W&B does not read).
    pub fn to_json(&self, artifact_id: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Entry<'a> {
            digest: &'a str,
            size: u64,
            #[serde(rename = "birthArtifactID")]
            birth_artifact_id: &'a str,
            skip_cache: bool,
        }
        let contents: BTreeMap<&str, Entry<'_>> = self
            .files
            .iter()
            .map(|f| {
                let entry = Entry {
                    digest: &f.md5,
                    size: f.size,
                    birth_artifact_id: artifact_id,
                    skip_cache: false,
                };
                (f.name.as_str(), entry)
            })
            .collect();
        let manifest = json!({
            "version": 1,
            "storagePolicy": "wandb-storage-policy-v1",
            "storagePolicyConfig": {"storageLayout": "V2"},
            "contents": contents,
        });
        manifest.to_string().into_bytes()
    }
}

fn collect_files(
    dir: &Path,
    prefix: &str,
    multipart: &Multipart,
    out: &mut Vec<ArtifactFile>,
) -> Result<()> {
    let io = |source| WandbError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io)?
        .collect::<std::io::Result<_>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            collect_files(&entry.path(), &full, multipart, out)?;
        } else if kind.is_file() {
            out.push(ArtifactFile::hash(&full, &entry.path(), multipart)?);
        }
    }
    Ok(())
}

/// An artifact to log.
#[derive(Debug, Clone)]
pub struct ArtifactSpec<'a> {
    /// The collection (sequence) name: versions of one model share it.
    pub name: &'a str,
    /// The artifact type: `model` for adapters and exports.
    pub kind: &'a str,
    pub description: Option<&'a str>,
    /// Shown with the version in W&B: base model, LoRA config, data hash, loss, scores.
    pub metadata: &'a Map<String, Value>,
    pub manifest: &'a Manifest,
}

/// A committed artifact version, as the run directory records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedArtifact {
    pub id: String,
    pub entity: String,
    pub project: String,
    pub name: String,
    pub kind: String,
    /// The manifest digest: the same files give the same digest and the same version.
    pub digest: String,
    /// The W&B run that logged it.
    pub run: String,
    /// The version's index in its collection (`v0`, `v1`, ...), as W&B answered it; absent
    /// from run directories written before bora asked for it, or when W&B did not answer.
    #[serde(default)]
    pub version: Option<u64>,
    /// True when W&B already had this content and gave the existing version back.
    #[serde(skip)]
    pub reused: bool,
}

impl LoggedArtifact {
    /// `entity/project/name:vN` (`:latest` when the index is not known), the reference
    /// `wandb` and the W&B UI take.
    pub fn reference(&self) -> String {
        let alias = self
            .version
            .map_or_else(|| "latest".to_owned(), |v| format!("v{v}"));
        format!("{}/{}/{}:{alias}", self.entity, self.project, self.name)
    }

    /// `wandb-artifact:///entity/project/name:vN`, the form Weave refers to a W&B artifact
    /// by (its `wandb-artifact` ref scheme), pinned to this version; `None` when the index
    /// is not known, since `latest` would move when a newer version is logged.
    pub fn weave_ref(&self) -> Option<String> {
        let version = self.version?;
        Some(format!(
            "wandb-artifact:///{}/{}/{}:v{version}",
            self.entity, self.project, self.name
        ))
    }
}

/// A registry collection: `wandb-registry-REGISTRY` in the organization, as
/// `run.link_artifact(artifact, "wandb-registry-REGISTRY/COLLECTION")` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryTarget {
    pub registry: String,
    pub collection: String,
}

impl RegistryTarget {
    /// `COLLECTION` (in the `model` registry) or `REGISTRY/COLLECTION`; a leading
    /// `wandb-registry-` is accepted as wandb writes it.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |what: &str| WandbError::Registry {
            name: text.to_owned(),
            what: what.to_owned(),
        };
        let (registry, collection) = match text.split_once('/') {
            Some((r, c)) => (r.strip_prefix("wandb-registry-").unwrap_or(r), c),
            None => ("model", text),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !valid(registry) || !valid(collection) {
            return Err(bad(
                "expected COLLECTION or REGISTRY/COLLECTION, each of letters, digits, `-`, `_`, `.`",
            ));
        }
        Ok(Self {
            registry: registry.to_owned(),
            collection: collection.to_owned(),
        })
    }

    pub fn project(&self) -> String {
        format!("wandb-registry-{}", self.registry)
    }
}

/// The HTTP side of artifact uploads: presigned storage URLs, sent without the API key,
/// through the Hub client's retrying transport.
fn storage_client(client: &Client, retry: &Retry) -> HubClient {
    HubClient::without_token(client.base_url()).with_retry(retry.clone())
}

/// Retries a GraphQL operation the way uploads are retried: transport errors, 429 and 5xx.
/// An answer that says the key is not accepted (401/403) or the request is wrong is final.
fn graphql_retried(
    client: &Client,
    retry: &Retry,
    operation: &'static str,
    query: &str,
    variables: &Value,
) -> Result<Value> {
    let mut attempt = 1;
    loop {
        match client.graphql(operation, query, variables.clone()) {
            Err(e) if attempt < retry.attempts && e.is_transient() => {
                let delay = retry.delay(attempt);
                tracing::warn!("W&B {operation} failed ({e}); retrying in {delay:?}");
                retry.wait(delay);
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn missing(operation: &'static str, what: &str) -> WandbError {
    WandbError::Response {
        what: operation,
        message: format!("the answer has no {what}"),
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str, operation: &'static str) -> Result<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| missing(operation, &pointer[1..].replace('/', ".")))
}

/// `Name:Value` headers from W&B's `uploadHeaders`.
fn upload_headers(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|h| h.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

impl WandbRun {
    /// Logs `spec` as an output artifact of this run, or gets the existing version back when
    /// the collection's latest version has the same digest. Returns once W&B has committed
    /// it; on error nothing was committed.
    pub fn log_artifact(
        &mut self,
        spec: &ArtifactSpec<'_>,
        retry: &Retry,
    ) -> Result<LoggedArtifact> {
        let client = &self.client;
        let state = &self.state;
        let digest = spec.manifest.digest();
        let metadata = Value::Object(spec.metadata.clone()).to_string();
        let input = json!({
            "aliases": [{"alias": "latest", "artifactCollectionName": spec.name}],
            "artifactCollectionName": spec.name,
            "artifactCollectionNames": null,
            "artifactTypeName": spec.kind,
            "clientID": random_id(128),
            "clientMutationId": null,
            "description": spec.description,
            "digest": digest,
            "digestAlgorithm": "MANIFEST_MD5",
            "distributedID": null,
            "enableDigestDeduplication": true,
            "entityName": state.entity,
            "historyStep": self.history_step(),
            "labels": null,
            "metadata": metadata,
            "projectName": state.project,
            "runName": state.id,
            "sequenceClientID": random_id(128),
            "storageRegion": null,
            "ttlDurationSeconds": null,
        });
        const CREATE: &str = "CreateArtifact";
        let data = graphql_retried(
            client,
            retry,
            CREATE,
            CREATE_ARTIFACT,
            &json!({"input": input}),
        )?;
        let id = str_at(&data, "/createArtifact/artifact/id", CREATE)?.to_owned();
        let committed = str_at(&data, "/createArtifact/artifact/state", CREATE)? == "COMMITTED";
        let latest = data
            .pointer("/createArtifact/artifact/artifactSequence/latestArtifact/id")
            .and_then(Value::as_str)
            .filter(|latest| *latest != id)
            .map(str::to_owned);
        let logged = LoggedArtifact {
            id: id.clone(),
            entity: state.entity.clone(),
            project: state.project.clone(),
            name: spec.name.to_owned(),
            kind: spec.kind.to_owned(),
            digest,
            run: state.id.clone(),
            version: None,
            reused: committed,
        };
        if !committed {
            self.upload_version(&id, latest.as_deref(), spec.manifest, retry)?;
            const COMMIT: &str = "CommitArtifact";
            let data = graphql_retried(
                &self.client,
                retry,
                COMMIT,
                COMMIT_ARTIFACT,
                &json!({"artifactID": id}),
            )?;
            str_at(&data, "/commitArtifact/artifact/id", COMMIT)?;
        }
        Ok(LoggedArtifact {
            version: self.version_index(&id, retry),
            ..logged
        })
    }

    /// The committed version's index, asked for as wandb asks once a version is saved
    /// (`ArtifactByID`). The version is W&B's either way, so a failed lookup is a warning
    /// and an unknown index, never a failed log.
    fn version_index(&self, artifact_id: &str, retry: &Retry) -> Option<u64> {
        const BY_ID: &str = "ArtifactByID";
        let answer = graphql_retried(
            &self.client,
            retry,
            BY_ID,
            ARTIFACT_BY_ID,
            &json!({"id": artifact_id}),
        )
        .and_then(|data| {
            data.pointer("/artifact/versionIndex")
                .and_then(Value::as_u64)
                .ok_or_else(|| missing(BY_ID, "artifact.versionIndex"))
        });
        match answer {
            Ok(index) => Some(index),
            Err(e) => {
                tracing::warn!(
                    "W&B artifact {artifact_id} is committed; its version index is not known: {e}"
                );
                None
            }
        }
    }

    /// The history step an artifact logged now belongs to: the step after the last one
    /// logged, as `wandb` records it; none before any.
    fn history_step(&self) -> Option<u64> {
        self.last_logged_step().map(|s| s + 1)
    }

    /// Everything between `CreateArtifact` and `CommitArtifact`: the manifest record, the
    /// files W&B does not have yet, the manifest file.
    fn upload_version(
        &self,
        artifact_id: &str,
        base_id: Option<&str>,
        manifest: &Manifest,
        retry: &Retry,
    ) -> Result<()> {
        let client = &self.client;
        let state = &self.state;
        let manifest_vars = |digest: &str, include_upload: bool| {
            json!({
                "artifactID": artifact_id,
                "baseArtifactID": base_id,
                "digest": digest,
                "entityName": state.entity,
                "includeUpload": include_upload,
                "manifestType": "FULL",
                "name": MANIFEST_FILE_NAME,
                "projectName": state.project,
                "runName": state.id,
            })
        };
        const MANIFEST: &str = "CreateArtifactManifest";
        let data = graphql_retried(
            client,
            retry,
            MANIFEST,
            CREATE_ARTIFACT_MANIFEST,
            &manifest_vars("", false),
        )?;
        let manifest_id = str_at(
            &data,
            "/createArtifactManifest/artifactManifest/id",
            MANIFEST,
        )?
        .to_owned();

        let files: Vec<Value> = manifest
            .files()
            .iter()
            .map(|f| {
                let parts = (!f.part_md5s.is_empty()).then(|| {
                    f.part_md5s
                        .iter()
                        .enumerate()
                        .map(|(i, md5)| json!({"hexMD5": md5, "partNumber": i + 1}))
                        .collect::<Vec<_>>()
                });
                json!({
                    "artifactID": artifact_id,
                    "artifactManifestID": manifest_id,
                    "md5": f.md5,
                    "mimetype": null,
                    "name": f.name,
                    "uploadPartsInput": parts,
                })
            })
            .collect();
        const FILES: &str = "CreateArtifactFiles";
        let data = graphql_retried(
            client,
            retry,
            FILES,
            CREATE_ARTIFACT_FILES,
            &json!({"input": {
                "artifactFiles": files,
                "clientMutationId": null,
                "cloudRegionID": null,
                "storageLayout": "V2",
            }}),
        )?;
        let edges = data
            .pointer("/createArtifactFiles/files/edges")
            .and_then(Value::as_array)
            .ok_or_else(|| missing(FILES, "createArtifactFiles.files.edges"))?;
        if edges.len() != manifest.files().len() {
            return Err(WandbError::Response {
                what: FILES,
                message: format!(
                    "{} files asked for, {} answered",
                    manifest.files().len(),
                    edges.len()
                ),
            });
        }
        let storage = storage_client(client, retry);
        for (file, edge) in manifest.files().iter().zip(edges) {
            let node = &edge["node"];
            let headers = upload_headers(&node["uploadHeaders"]);
            let multipart = node["uploadMultipartUrls"]
                .as_object()
                .filter(|_| !file.part_md5s.is_empty());
            match (node["uploadUrl"].as_str(), multipart) {
                // W&B stores a file with this MD5 already.
                (None, _) => {}
                (Some(_), Some(multipart)) => {
                    let storage_path = str_at(node, "/storagePath", FILES)?;
                    self.upload_parts(&storage, artifact_id, storage_path, file, multipart, retry)?
                }
                (Some(url), None) => put_file(&storage, client, url, &headers, file)?,
            }
        }

        let bytes = manifest.to_json(artifact_id);
        let digest = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&bytes));
        let data = graphql_retried(
            client,
            retry,
            MANIFEST,
            CREATE_ARTIFACT_MANIFEST,
            &manifest_vars(&digest, true),
        )?;
        let file = data
            .pointer("/createArtifactManifest/artifactManifest/file")
            .ok_or_else(|| missing(MANIFEST, "createArtifactManifest.artifactManifest.file"))?;
        let url = str_at(file, "/uploadUrl", MANIFEST)?;
        let headers = upload_headers(&file["uploadHeaders"]);
        put(
            &storage,
            client,
            url,
            &headers,
            Body::Bytes(&bytes),
            MANIFEST_FILE_NAME,
        )?;
        Ok(())
    }

    /// Sends `file` in the parts W&B gave URLs for, then completes the upload with the
    /// parts' ETags.
    fn upload_parts(
        &self,
        storage: &HubClient,
        artifact_id: &str,
        storage_path: &str,
        file: &ArtifactFile,
        multipart: &Map<String, Value>,
        retry: &Retry,
    ) -> Result<()> {
        const COMPLETE: &str = "CompleteMultipartUploadArtifact";
        let upload_id = multipart
            .get("uploadID")
            .and_then(Value::as_str)
            .ok_or_else(|| missing("CreateArtifactFiles", "uploadMultipartUrls.uploadID"))?;
        let part_size = file.part_size;
        let urls: BTreeMap<u64, &str> = multipart
            .get("uploadUrlParts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["partNumber"].as_u64()?, p["uploadUrl"].as_str()?)))
            .collect();
        let mut completed = Vec::with_capacity(file.part_md5s.len());
        for number in 1..=file.part_md5s.len() as u64 {
            let url = urls.get(&number).ok_or_else(|| WandbError::Response {
                what: "CreateArtifactFiles",
                message: format!("no upload URL for part {number} of {}", file.name),
            })?;
            let offset = (number - 1) * part_size;
            let len = part_size.min(file.size - offset);
            let body = Body::File {
                path: &file.path,
                offset,
                len,
            };
            let etag = put(storage, &self.client, url, &[], body, &file.name)?;
            let etag = etag.ok_or_else(|| WandbError::Response {
                what: "file upload",
                message: format!("part {number} of {}: the answer has no ETag", file.name),
            })?;
            // wandb-core sends each part's ETag, as storage answered it, as `hexMD5`.
            completed.push(json!({"hexMD5": etag, "partNumber": number}));
        }
        graphql_retried(
            &self.client,
            retry,
            COMPLETE,
            COMPLETE_MULTIPART_UPLOAD,
            &json!({
                "completeMultipartAction": "Complete",
                "completedParts": completed,
                "artifactID": artifact_id,
                "storagePath": storage_path,
                "uploadID": upload_id,
            }),
        )?;
        Ok(())
    }

    /// Declares `artifact` an input of this run (`run.use_artifact`), which draws the
    /// lineage edge from the run that logged it to this one.
    pub fn use_artifact(&self, artifact: &LoggedArtifact, retry: &Retry) -> Result<()> {
        const USE: &str = "UseArtifact";
        let data = graphql_retried(
            &self.client,
            retry,
            USE,
            USE_ARTIFACT,
            &json!({
                "artifactID": artifact.id,
                "entityName": self.state.entity,
                "projectName": self.state.project,
                "runName": self.state.id,
                "usedAs": null,
            }),
        )?;
        str_at(&data, "/useArtifact/artifact/id", USE)?;
        Ok(())
    }

    /// Links `artifact` into a registry collection of the entity's organization; returns
    /// the version index it has there.
    pub fn link_artifact(
        &self,
        artifact: &LoggedArtifact,
        target: &RegistryTarget,
        retry: &Retry,
    ) -> Result<u64> {
        const ORG: &str = "FetchOrgInfoFromEntity";
        let data = graphql_retried(
            &self.client,
            retry,
            ORG,
            FETCH_ORG_INFO_FROM_ENTITY,
            &json!({"entity": artifact.entity}),
        )?;
        let org_entity = data
            .pointer("/entity/organization/orgEntity/name")
            .and_then(Value::as_str)
            .or_else(|| {
                data.pointer("/entity/user/organizations/0/orgEntity/name")
                    .and_then(Value::as_str)
            })
            .ok_or_else(|| WandbError::Registry {
                name: format!("{}/{}", target.registry, target.collection),
                what: format!(
                    "entity {:?} belongs to no organization, and registries live in one",
                    artifact.entity
                ),
            })?
            .to_owned();
        const LINK: &str = "LinkArtifact";
        let data = graphql_retried(
            &self.client,
            retry,
            LINK,
            LINK_ARTIFACT,
            &json!({"input": {
                "aliases": [],
                "artifactID": artifact.id,
                "artifactPortfolioName": target.collection,
                "entityName": org_entity,
                "projectName": target.project(),
            }}),
        )?;
        data.pointer("/result/versionIndex")
            .and_then(Value::as_u64)
            .ok_or_else(|| missing(LINK, "result.versionIndex"))
    }
}

/// PUTs a whole file to its upload URL.
fn put_file(
    storage: &HubClient,
    client: &Client,
    url: &str,
    headers: &[(String, String)],
    file: &ArtifactFile,
) -> Result<()> {
    let body = Body::File {
        path: &file.path,
        offset: 0,
        len: file.size,
    };
    put(storage, client, url, headers, body, &file.name).map(drop)
}

/// One retried PUT to a storage URL (a relative one is on the API server); returns the
/// answer's ETag.
fn put(
    storage: &HubClient,
    client: &Client,
    url: &str,
    headers: &[(String, String)],
    body: Body<'_>,
    name: &str,
) -> Result<Option<String>> {
    let url = if url.starts_with('/') {
        format!("{}{url}", client.base_url())
    } else {
        url.to_owned()
    };
    let req = Req {
        method: "PUT",
        url,
        auth: false,
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        body,
    };
    let upload_error = |message: String| WandbError::Upload {
        file: name.to_owned(),
        message,
    };
    let resp = storage
        .send(&req)
        .map_err(|e| upload_error(e.to_string()))?;
    if !(200..300).contains(&resp.status) {
        return Err(upload_error(storage.status_error(&req, resp).to_string()));
    }
    Ok(resp.etag)
}

/// The SHA-256 (hex) of a file, read in blocks: the training data's hash in an adapter's
/// metadata.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Sha256;
    let io = |source| WandbError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(hex(&sha.finalize()));
        }
        sha.update(&buf[..n]);
    }
}

/// The artifacts a run directory has logged, by role (`adapter`, `export-gguf`, ...).
pub fn read_artifacts(run_dir: &Path) -> Result<BTreeMap<String, LoggedArtifact>> {
    let path = run_dir.join(ARTIFACTS_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| WandbError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(WandbError::Io { path, source }),
    }
}

/// Records `artifact` under `role` in the run directory (temporary name, then rename).
pub fn record_artifact(run_dir: &Path, role: &str, artifact: &LoggedArtifact) -> Result<()> {
    let mut all = read_artifacts(run_dir)?;
    all.insert(role.to_owned(), artifact.clone());
    let path = run_dir.join(ARTIFACTS_FILE);
    let text = serde_json::to_string_pretty(&all).map_err(|e| WandbError::Io {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Ok(bora_formats::atomic::write_file(&path, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_follow_the_threshold_and_the_part_limit() {
        let m = Multipart::default();
        assert_eq!(m.part_size_for(MULTIPART_THRESHOLD - 1), None);
        assert_eq!(
            m.part_size_for(MULTIPART_THRESHOLD),
            Some(MULTIPART_PART_SIZE)
        );
        let huge = 2_000u64 << 30;
        let size = m.part_size_for(huge).unwrap();
        assert!(huge.div_ceil(size) <= MULTIPART_MAX_PARTS);
        assert!(size > MULTIPART_PART_SIZE);
    }

    #[test]
    fn registry_targets_parse_as_wandb_names_them() {
        let t = RegistryTarget::parse("my-adapters").unwrap();
        assert_eq!(
            (t.registry.as_str(), t.collection.as_str()),
            ("model", "my-adapters")
        );
        assert_eq!(t.project(), "wandb-registry-model");
        let t = RegistryTarget::parse("wandb-registry-llm/tuned").unwrap();
        assert_eq!(
            (t.registry.as_str(), t.collection.as_str()),
            ("llm", "tuned")
        );
        for bad in ["", "a/", "/b", "a b", "a/b/c"] {
            assert!(RegistryTarget::parse(bad).is_err(), "{bad:?}");
        }
    }
}
