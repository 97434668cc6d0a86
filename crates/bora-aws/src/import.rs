//! Custom Model Import: `CreateModelImportJob`, then `GetModelImportJob` until the job ends.
//! A run that was stopped while its job was importing finds the job again
//! (`ListModelImportJobs`, in progress, same imported-model name) instead of starting a
//! second one.

use std::time::{Duration, Instant};

use aws_sdk_bedrock::types::{
    ModelDataSource, ModelImportJobStatus, S3DataSource, SortJobsBy, SortOrder,
};

use crate::error::{sdk_error, AwsError, Result};
use crate::s3::S3Location;
use crate::Aws;

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportRequest<'a> {
    pub job_name: &'a str,
    /// The name the imported model gets in Bedrock.
    pub model_name: &'a str,
    /// The service role Bedrock assumes to read the bucket.
    pub role_arn: &'a str,
    pub source: &'a S3Location,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStatus {
    InProgress,
    Completed,
    Failed,
}

impl ImportStatus {
    pub fn name(self) -> &'static str {
        match self {
            ImportStatus::InProgress => "InProgress",
            ImportStatus::Completed => "Completed",
            ImportStatus::Failed => "Failed",
        }
    }
}

/// One `GetModelImportJob` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportJob {
    pub job_arn: String,
    pub status: ImportStatus,
    pub model_arn: Option<String>,
    pub failure: Option<String>,
}

/// The job name as an idempotency token (letters, digits and single hyphens).
fn request_token(job_name: &str) -> String {
    job_name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

impl Aws {
    fn bedrock(&self) -> aws_sdk_bedrock::Client {
        aws_sdk_bedrock::Client::new(&self.config)
    }

    /// The ARN of an import job still in progress for `model_name`, if there is one.
    pub fn running_import(&self, model_name: &str) -> Result<Option<String>> {
        let client = self.bedrock();
        self.block_on(async {
            let mut token: Option<String> = None;
            loop {
                let page = client
                    .list_model_import_jobs()
                    .status_equals(ModelImportJobStatus::InProgress)
                    .name_contains(model_name)
                    .sort_by(SortJobsBy::CreationTime)
                    .sort_order(SortOrder::Descending)
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| sdk_error("bedrock:ListModelImportJobs", e))?;
                if let Some(job) = page
                    .model_import_job_summaries()
                    .iter()
                    .find(|j| j.imported_model_name() == Some(model_name))
                {
                    return Ok(Some(job.job_arn().to_owned()));
                }
                match page.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                    _ => return Ok(None),
                }
            }
        })
    }

    /// Starts an import job; returns its ARN. The client token makes a retried request
    /// (the SDK retries throttling and dropped connections) create one job, not two.
    pub fn create_import_job(&self, request: &ImportRequest<'_>) -> Result<String> {
        let client = self.bedrock();
        let source = ModelDataSource::S3DataSource(
            S3DataSource::builder()
                .s3_uri(request.source.to_string())
                .build()
                .map_err(|e| AwsError::Response {
                    action: "bedrock:CreateModelImportJob",
                    what: e.to_string(),
                })?,
        );
        let created = self
            .block_on(
                client
                    .create_model_import_job()
                    .job_name(request.job_name)
                    .imported_model_name(request.model_name)
                    .role_arn(request.role_arn)
                    .model_data_source(source)
                    .client_request_token(request_token(request.job_name))
                    .send(),
            )
            .map_err(|e| sdk_error("bedrock:CreateModelImportJob", e))?;
        Ok(created.job_arn().to_owned())
    }

    /// The job's state now.
    pub fn import_job(&self, job: &str) -> Result<ImportJob> {
        let client = self.bedrock();
        let got = self
            .block_on(client.get_model_import_job().job_identifier(job).send())
            .map_err(|e| sdk_error("bedrock:GetModelImportJob", e))?;
        let status = match got.status() {
            Some(ModelImportJobStatus::Completed) => ImportStatus::Completed,
            Some(ModelImportJobStatus::Failed) => ImportStatus::Failed,
            Some(ModelImportJobStatus::InProgress) => ImportStatus::InProgress,
            other => {
                return Err(AwsError::Response {
                    action: "bedrock:GetModelImportJob",
                    what: format!("status {other:?}"),
                })
            }
        };
        Ok(ImportJob {
            job_arn: got.job_arn().unwrap_or(job).to_owned(),
            status,
            model_arn: got.imported_model_arn().map(str::to_owned),
            failure: got.failure_message().map(str::to_owned),
        })
    }

    /// Polls the job every `interval` until it completes (the imported model's ARN), fails
    /// (its failure message) or `timeout` passes. `on_poll` sees every answer with the time
    /// waited so far.
    pub fn wait_import_job(
        &self,
        job: &str,
        interval: Duration,
        timeout: Duration,
        on_poll: &mut dyn FnMut(&ImportJob, Duration),
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            let state = self.import_job(job)?;
            on_poll(&state, start.elapsed());
            match state.status {
                ImportStatus::Completed => {
                    return state.model_arn.ok_or_else(|| AwsError::Response {
                        action: "bedrock:GetModelImportJob",
                        what: "the job completed without an importedModelArn".into(),
                    })
                }
                ImportStatus::Failed => {
                    return Err(AwsError::ImportFailed {
                        job: state.job_arn,
                        message: state
                            .failure
                            .unwrap_or_else(|| "(no failure message)".into()),
                    })
                }
                ImportStatus::InProgress if start.elapsed() >= timeout => {
                    return Err(AwsError::ImportTimeout {
                        job: state.job_arn,
                        status: state.status.name().into(),
                        waited: start.elapsed(),
                    })
                }
                ImportStatus::InProgress => std::thread::sleep(interval),
            }
        }
    }
}
