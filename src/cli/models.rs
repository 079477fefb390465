//! `models list | create | update | delete` and `models default [MODEL]`.
//!
//! A model is named by its id, by `PROVIDER/MODEL` (`openai/gpt-4o`; a model name may itself
//! contain `/`), or by its model name alone when one provider offers it. The default model is
//! the one every agent falls back to; the rule is the store's and the API's: exactly one
//! default whenever a model exists. Setting it is idempotent; un-defaulting the only model, or
//! anything else that would leave none, is refused (exit 65), and deleting the default hands
//! the role to the oldest enabled model.

use super::conn::{Conn, ConnArgs};
use super::exit::CliError;
use super::items::{ModelItem, ProviderItem};
use super::output::{self, or_dash, Output, OutputArgs, Table};
use crate::store::{ModelPatch, NewModel};
use clap::{ArgAction, Subcommand};
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List models; the default is marked.
    List {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Create a model for a provider (the first model becomes the default).
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        out: OutputArgs,
        /// The provider's name or id.
        #[arg(long)]
        provider: String,
        /// The model name agents send (`gpt-4o`).
        #[arg(long)]
        model: String,
        #[arg(long)]
        display_name: Option<String>,
        /// Context window in tokens (> 0).
        #[arg(long)]
        context_limit: Option<i64>,
        /// Offer it (`--enabled` alone: true; default: true).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
        enabled: Option<bool>,
        /// Alias of --enabled=false.
        #[arg(long, conflicts_with = "enabled")]
        disabled: bool,
        /// Make it the default model (`--default` alone: true).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
        default: Option<bool>,
    },
    /// Update a model; what is not given is kept.
    Update {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        out: OutputArgs,
        /// Id, PROVIDER/MODEL, or a model name one provider offers.
        model_ref: String,
        /// A new model name.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, conflicts_with = "clear_display_name")]
        display_name: Option<String>,
        #[arg(long)]
        clear_display_name: bool,
        #[arg(long, conflicts_with = "clear_context_limit")]
        context_limit: Option<i64>,
        #[arg(long)]
        clear_context_limit: bool,
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
        enabled: Option<bool>,
        /// Alias of --enabled=false.
        #[arg(long, conflicts_with = "enabled")]
        disabled: bool,
        /// `--default` makes it the default; `--default=false` hands the role to the oldest
        /// other enabled model (refused when it is the only model).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
        default: Option<bool>,
    },
    /// Delete a model; if it was the default, the oldest enabled model takes over.
    Delete {
        #[command(flatten)]
        conn: ConnArgs,
        /// Id, PROVIDER/MODEL, or a model name one provider offers.
        model_ref: String,
    },
    /// Show the default model, or make MODEL the default (idempotent).
    Default {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        out: OutputArgs,
        /// Id, PROVIDER/MODEL, or a model name one provider offers.
        model_ref: Option<String>,
    },
}

pub async fn run(cmd: ModelsCommand) -> anyhow::Result<i32> {
    match cmd {
        ModelsCommand::List { conn, out } => {
            let conn = conn.open().await?;
            let read = async {
                Ok::<_, CliError>((conn.list_models().await?, conn.list_providers().await?))
            }
            .await;
            conn.close().await;
            let (models, providers) = read?;
            output::list(out.output, &models, || {
                let mut t = Table::new(&[
                    "ID",
                    "PROVIDER",
                    "MODEL",
                    "DISPLAY_NAME",
                    "CONTEXT",
                    "ENABLED",
                    "DEFAULT",
                ])
                .right(&[4]);
                for m in &models {
                    t.row(vec![
                        m.id.to_string(),
                        provider_name(&providers, m),
                        m.model.clone(),
                        or_dash(m.display_name.as_deref()),
                        or_dash(m.context_limit),
                        m.enabled.to_string(),
                        if m.is_default { "*" } else { "" }.into(),
                    ]);
                }
                t
            })?;
            Ok(0)
        }
        ModelsCommand::Create {
            conn,
            out,
            provider,
            model,
            display_name,
            context_limit,
            enabled,
            disabled,
            default,
        } => {
            let new = NewModel {
                provider: provider.clone(),
                model,
                display_name,
                context_limit,
                enabled: if disabled {
                    false
                } else {
                    enabled.unwrap_or(true)
                },
                is_default: default.unwrap_or(false),
            };
            let conn = conn.open().await?;
            let created = conn.create_model(new).await;
            conn.close().await;
            let m = created?;
            output::one(out.output, &m, || describe("created", &provider, &m))?;
            Ok(0)
        }
        ModelsCommand::Update {
            conn,
            out,
            model_ref,
            model,
            display_name,
            clear_display_name,
            context_limit,
            clear_context_limit,
            enabled,
            disabled,
            default,
        } => {
            let patch = ModelPatch {
                model,
                display_name: if clear_display_name {
                    Some(None)
                } else {
                    display_name.map(Some)
                },
                context_limit: if clear_context_limit {
                    Some(None)
                } else {
                    context_limit.map(Some)
                },
                enabled: if disabled { Some(false) } else { enabled },
                is_default: default,
            };
            let conn = conn.open().await?;
            let updated = async {
                let (id, providers) = resolve(&conn, &model_ref).await?;
                let m = conn.update_model(id, patch).await?;
                Ok::<_, CliError>((m, providers))
            }
            .await;
            conn.close().await;
            let (m, providers) = updated?;
            let provider = provider_name(&providers, &m);
            output::one(out.output, &m, || describe("updated", &provider, &m))?;
            Ok(0)
        }
        ModelsCommand::Delete { conn, model_ref } => {
            let conn = conn.open().await?;
            let deleted = async {
                let (id, _) = resolve(&conn, &model_ref).await?;
                let deleted = conn.delete_model(id).await?;
                let default = conn.default_model().await?;
                Ok::<_, CliError>((deleted, default))
            }
            .await;
            let providers = conn.list_providers().await;
            conn.close().await;
            let (deleted, default) = deleted?;
            if !deleted {
                return Err(no_model(&model_ref).into());
            }
            let mut text = format!("deleted model {model_ref}\n");
            if let (Some(d), Ok(providers)) = (default, providers) {
                text.push_str(&format!(
                    "default model: {}/{} ({})\n",
                    provider_name(&providers, &d),
                    d.model,
                    d.id
                ));
            }
            output::print(&text)?;
            Ok(0)
        }
        ModelsCommand::Default {
            conn,
            out,
            model_ref,
        } => {
            let conn = conn.open().await?;
            let result = default(&conn, model_ref.as_deref()).await;
            conn.close().await;
            let (before, after, providers) = result?;
            let name =
                |m: &ModelItem| format!("{}/{} ({})", provider_name(&providers, m), m.model, m.id);
            match (out.output, &after) {
                (Output::Table, None) => output::print("no models, so no default model\n")?,
                (Output::Table, Some(m)) => {
                    let text = match (&model_ref, before) {
                        (None, _) => format!("default model: {}", name(m)),
                        (Some(_), Some(b)) if b == m.id => {
                            format!("{} is already the default model", name(m))
                        }
                        (Some(_), _) => format!("default model: {}", name(m)),
                    };
                    output::print(&(text + "\n"))?;
                }
                (_, after) => output::one(out.output, after, String::new)?,
            }
            Ok(0)
        }
    }
}

/// Show or set the default: (default before, default after, providers for names).
async fn default(
    conn: &Conn,
    model_ref: Option<&str>,
) -> Result<(Option<Uuid>, Option<ModelItem>, Vec<ProviderItem>), CliError> {
    match model_ref {
        None => {
            let m = conn.default_model().await?;
            Ok((m.as_ref().map(|m| m.id), m, conn.list_providers().await?))
        }
        Some(r) => {
            let (id, providers) = resolve(conn, r).await?;
            let before = conn.default_model().await?.map(|m| m.id);
            let m = conn.set_default_model(id).await?;
            Ok((before, Some(m), providers))
        }
    }
}

/// The model a reference names: an id, `PROVIDER/MODEL`, or a model name one provider offers.
/// Also returns the providers read on the way (for names in the output).
async fn resolve(conn: &Conn, r: &str) -> Result<(Uuid, Vec<ProviderItem>), CliError> {
    let providers = conn.list_providers().await?;
    if let Ok(id) = Uuid::parse_str(r) {
        return Ok((id, providers));
    }
    let models = conn.list_models().await?;
    if let Some((p, name)) = r.split_once('/') {
        if let Some(provider) = providers.iter().find(|x| x.name == p) {
            return models
                .iter()
                .find(|m| m.provider_id == provider.id && m.model == name)
                .map(|m| (m.id, providers.clone()))
                .ok_or_else(|| no_model(r));
        }
    }
    let named: Vec<&ModelItem> = models.iter().filter(|m| m.model == r).collect();
    match named.as_slice() {
        [] => Err(no_model(r)),
        [one] => Ok((one.id, providers.clone())),
        several => {
            let offered: Vec<String> = several
                .iter()
                .map(|m| format!("{}/{}", provider_name(&providers, m), m.model))
                .collect();
            Err(CliError::Invalid(format!(
                "model {r} is offered by several providers ({}): name it as PROVIDER/MODEL or by id",
                offered.join(", ")
            )))
        }
    }
}

fn no_model(r: &str) -> CliError {
    CliError::NotFound(format!("no such model {r}"))
}

fn provider_name(providers: &[ProviderItem], m: &ModelItem) -> String {
    providers
        .iter()
        .find(|p| p.id == m.provider_id)
        .map(|p| p.name.clone())
        .unwrap_or_else(|| m.provider_id.to_string())
}

fn describe(done: &str, provider: &str, m: &ModelItem) -> String {
    let mut text = format!("{done} model {provider}/{} ({})", m.model, m.id);
    if m.is_default {
        text.push_str(", the default model");
    }
    if !m.enabled {
        text.push_str(", disabled");
    }
    text
}
