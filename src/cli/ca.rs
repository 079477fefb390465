//! `ca init [--force]`, `ca show`.

use crate::ca::{generate_files, CaPaths, CertificateAuthority};
use crate::config::{DEFAULT_CA_CERT, DEFAULT_CA_KEY};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct CaFileArgs {
    /// CA certificate (PEM).
    #[arg(long, env = "AIBRIDGE_CA_CERT", default_value = DEFAULT_CA_CERT)]
    pub ca_cert: PathBuf,
    /// CA private key (PEM, mode 0600).
    #[arg(long, env = "AIBRIDGE_CA_KEY", default_value = DEFAULT_CA_KEY)]
    pub ca_key: PathBuf,
}

impl CaFileArgs {
    pub fn paths(&self) -> CaPaths {
        CaPaths {
            cert: self.ca_cert.clone(),
            key: self.ca_key.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Generate an ECDSA P-256 CA (key written 0600).
    Init {
        #[command(flatten)]
        files: CaFileArgs,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate (PEM) and its expiry.
    Show {
        #[command(flatten)]
        files: CaFileArgs,
    },
}

pub fn run(cmd: CaCommand) -> anyhow::Result<i32> {
    match cmd {
        CaCommand::Init { files, force } => {
            let paths = files.paths();
            generate_files(&paths, force)?;
            let ca = CertificateAuthority::load(&paths)?;
            println!("CA certificate: {}", paths.cert.display());
            println!("CA key (0600):  {}", paths.key.display());
            println!("valid until:    {}", ca.not_after());
            println!("Trust it in agents with SSL_CERT_FILE / NODE_EXTRA_CA_CERTS / REQUESTS_CA_BUNDLE (see certs/README.md).");
            Ok(0)
        }
        CaCommand::Show { files } => {
            let ca = CertificateAuthority::load(&files.paths())?;
            eprintln!("valid until {}", ca.not_after());
            print!("{}", ca.cert_pem());
            Ok(0)
        }
    }
}
