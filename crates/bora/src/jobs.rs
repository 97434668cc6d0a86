//! `bora jobs list|logs|cancel|attach`: the Hugging Face Jobs that `bora train --on hf-jobs` started,
//! named by run directory or job id.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Result;
use bora_hub::hub::LogOptions;
use bora_jobs::{list_runs, resolve_job, Account};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// bora's jobs in your namespace: id, stage, flavor, run, URL.
    List,
    /// Print a job's log (runs/NAME or a job id); --follow streams it until the job ends.
    Logs {
        job: String,
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a job (runs/NAME or a job id).
    Cancel { job: String },
    /// Follow a run's job (started with --detach, or left with Ctrl-C) into its run
    /// directory: metrics, checkpoints, and the adapter at the end.
    Attach { run: PathBuf },
}

pub fn run(args: &JobsArgs) -> Result<()> {
    let account = || Account::from_env(|k| std::env::var(k).ok());
    match &args.command {
        JobsCommand::List => {
            for job in list_runs(&account()?)? {
                println!(
                    "{}  {:<10}  {:<12}  {:<20}  {}",
                    job.id,
                    job.stage,
                    job.flavor.as_deref().unwrap_or("-"),
                    job.labels["bora-run"],
                    job.url
                );
            }
        }
        JobsCommand::Logs { job, follow } => {
            let account = account()?;
            let (namespace, id) = resolve_job(job, &account)?;
            let options = LogOptions {
                follow: *follow,
                ..LogOptions::default()
            };
            let end = account
                .client()
                .job_logs(&namespace, &id, options, &mut |line| {
                    println!("{line}");
                    ControlFlow::Continue(())
                })?;
            if let Some(job) = end {
                eprintln!(
                    "job {id}: {}{}",
                    job.stage,
                    job.message.map(|m| format!(" ({m})")).unwrap_or_default()
                );
            }
        }
        JobsCommand::Cancel { job } => {
            let account = account()?;
            let (namespace, id) = resolve_job(job, &account)?;
            account.client().cancel_job(&namespace, &id)?;
            println!("cancelled job {id}");
        }
        JobsCommand::Attach { run } => crate::train::attach(run)?,
    }
    Ok(())
}
