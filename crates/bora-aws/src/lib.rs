//! bora-aws: a fine-tune deployed to Amazon Bedrock, through the AWS SDK for Rust.
//!
//! [`check_import_dir`] checks a merged export against what Custom Model Import documents
//! (architecture, file names, safetensors dtypes, size) before anything is sent.
//! [`Aws::connect`] resolves the region, credentials, retries and endpoints as every AWS tool
//! does (environment, shared config and credentials files, SSO, credential processes,
//! container and instance roles; `AWS_ENDPOINT_URL` and its per-service forms).
//! [`Aws::upload_dir`] puts the directory into S3 (multipart, resumed across runs, files
//! already there with the same bytes skipped); [`Aws::create_import_job`] and
//! [`Aws::wait_import_job`] import it; [`Aws::invoke`] and [`Aws::invoke_stream`] ask the
//! imported model for completions.
//!
//! The SDK is asynchronous; this crate owns one single-threaded Tokio runtime and offers
//! blocking calls, like the rest of bora's remote clients.
#![forbid(unsafe_code)]

mod check;
mod error;
mod import;
mod invoke;
mod s3;

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

pub use check::{check_import_dir, ImportCheck, SUPPORTED_ARCHITECTURES};
pub use error::{AwsError, Result};
pub use import::{ImportJob, ImportRequest, ImportStatus};
pub use invoke::{request_body, response_text, InvokeParams};
pub use s3::{FileOutcome, S3Location, UploadEvent, UploadOptions, MIN_PART_SIZE};

/// How long a connection may take to open, and how long a response may keep the client
/// waiting for its next bytes (an imported model's first answer after a cold start included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// A resolved AWS configuration and the runtime its clients run on.
pub struct Aws {
    runtime: tokio::runtime::Runtime,
    config: SdkConfig,
}

impl Aws {
    /// Resolves the configuration the way the AWS CLI does; `region` overrides the resolved
    /// one. Credentials are resolved lazily by the SDK, on the first call that needs them.
    pub fn connect(region: Option<&str>) -> Result<Aws> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| AwsError::Runtime { source })?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        // Every S3 body carries its Content-MD5 (see `s3`), which is also what the ETags
        // compared for skipping are made of; a second, CRC checksum is not asked for.
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            );
        if let Some(region) = region {
            loader = loader.region(Region::new(region.to_owned()));
        }
        let config = runtime.block_on(loader.load());
        if config.region().is_none() {
            return Err(AwsError::NoRegion);
        }
        Ok(Aws { runtime, config })
    }

    /// The region every client of this configuration calls.
    pub fn region(&self) -> &str {
        self.config.region().map(|r| r.as_ref()).unwrap_or_default()
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}
