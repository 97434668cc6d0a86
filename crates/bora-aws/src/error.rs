//! Errors that say which AWS call failed, what the service answered, and what to change:
//! the IAM permission that was missing, the quota that was reached, the credentials that
//! expired. Nothing here ever holds a credential: service errors carry the service's code and
//! message, transport errors the SDK's description of the failure.

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

pub type Result<T, E = AwsError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("no AWS region: pass --region, or set AWS_REGION or `region` in the AWS profile")]
    NoRegion,
    #[error("cannot start the AWS client runtime: {source}")]
    Runtime { source: std::io::Error },
    #[error("`{uri}` is not an S3 location: expected s3://BUCKET or s3://BUCKET/PREFIX")]
    S3Uri { uri: String },
    #[error("{}: {what}", path.display())]
    Model { path: PathBuf, what: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", service_text(.action, .code, .message))]
    Service {
        /// The IAM action of the call, e.g. `s3:PutObject`.
        action: &'static str,
        code: String,
        message: String,
    },
    #[error("{action}: {what}")]
    Transport { action: &'static str, what: String },
    #[error("{action}: unexpected answer: {what}")]
    Response { action: &'static str, what: String },
    #[error("{}: the upload finished with ETag {got} but the local file's is {expected}; the file changed while it was uploaded, run the command again", path.display())]
    Changed {
        path: PathBuf,
        expected: String,
        got: String,
    },
    #[error("import job {job} failed: {message}")]
    ImportFailed { job: String, message: String },
    #[error("import job {job} is still {status} after {}s; run the command again to keep waiting for it, or check it with `aws bedrock get-model-import-job --job-identifier {job}`", waited.as_secs())]
    ImportTimeout {
        job: String,
        status: String,
        waited: Duration,
    },
    #[error("the response stream of {model} broke after {received} characters: {what}")]
    StreamCut {
        model: String,
        received: usize,
        what: String,
    },
}

impl AwsError {
    /// The service's error code (`AccessDenied`, `ThrottlingException`...), if the service
    /// answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Service { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// `ACTION denied: CODE: MESSAGE` followed by what the code means for the user.
fn service_text(action: &str, code: &str, message: &str) -> String {
    let hint = match code {
        "AccessDenied" | "AccessDeniedException" | "Forbidden" => {
            let extra = if action == "bedrock:CreateModelImportJob" {
                " and `iam:PassRole` on the import role"
            } else {
                ""
            };
            format!("the caller lacks the IAM permission `{action}`{extra}; add it to the user's or role's policy")
        }
        "ServiceQuotaExceededException" => "a Bedrock service quota is reached (imported models per account, concurrent import jobs, or model units); delete unused imported models or ask for an increase in the Service Quotas console".to_owned(),
        "ThrottlingException" | "SlowDown" | "TooManyRequestsException" | "Throttling" => "the request rate or token quota was exceeded even after the SDK's retries; wait, raise AWS_MAX_ATTEMPTS, or ask for a higher quota".to_owned(),
        "ValidationException" => "the service rejected the request's contents".to_owned(),
        "ExpiredToken" | "ExpiredTokenException" | "InvalidClientTokenId" | "UnrecognizedClientException" | "SignatureDoesNotMatch" | "InvalidAccessKeyId" => "the AWS credentials are invalid or expired; refresh them (e.g. `aws sso login`)".to_owned(),
        "ModelNotReadyException" => "the imported model is still being loaded after the SDK's retries; try again in a minute".to_owned(),
        "ResourceNotFoundException" => "nothing by that name or ARN in this account and region".to_owned(),
        "NoSuchBucket" => "the bucket does not exist (or is in another account)".to_owned(),
        "ModelTimeoutException" => "the model took too long; ask for fewer tokens".to_owned(),
        _ => String::new(),
    };
    let message = if message.is_empty() {
        "(no message)"
    } else {
        message
    };
    if hint.is_empty() {
        format!("{action} failed: {code}: {message}")
    } else {
        format!("{action} failed: {code}: {message} ({hint})")
    }
}

/// An SDK error as an [`AwsError`]: the service's code and message when it answered, else
/// the SDK's whole chain of causes (no credentials found, connection refused, timeout).
pub(crate) fn sdk_error<E, R>(action: &'static str, err: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(service) = &err {
        let e = service.err();
        return AwsError::Service {
            action,
            code: e.code().unwrap_or("Unknown").to_owned(),
            message: e.message().unwrap_or_default().to_owned(),
        };
    }
    let mut what = DisplayErrorContext(&err).to_string();
    if what.contains("credentials") {
        what.push_str(" (no usable AWS credentials: set AWS_PROFILE, run `aws sso login` or `aws configure`, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)");
    }
    AwsError::Transport { action, what }
}

pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AwsError + '_ {
    move |source| AwsError::Io {
        path: path.to_path_buf(),
        source,
    }
}
