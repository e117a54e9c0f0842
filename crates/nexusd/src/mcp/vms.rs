//! Life-cycle tools: `vm_create`, `vm_list`, `vm_show`, `vm_start`, `vm_stop`, `vm_delete` and
//! `image_list`. Each calls the same services as the REST handlers.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};

use super::NexusMcp;
use super::access::Access;
use super::args::{
    Deleted, ImageList, ImageView, VmArgs, VmCreateArgs, VmDeleteArgs, VmDetail, VmList,
    VmListArgs, VmView, parse_state,
};
use super::error::ToolError;

/// How many state changes `vm_show` reports.
const SHOWN_TRANSITIONS: usize = 5;

#[tool_router(router = vm_tools, vis = "pub(super)")]
impl NexusMcp {
    #[tool(
        description = "Create a Linux microVM and, unless start is false, boot it (a few seconds) so guest tools can use it at once. Returns the VM: name, state (running when booted), resources and network. Fails if the name is taken or an argument is invalid; the message names the argument.",
        annotations(
            title = "Create a VM",
            destructive_hint = false,
            open_world_hint = false
        )
    )]
    async fn vm_create(
        &self,
        Parameters(args): Parameters<VmCreateArgs>,
        access: Access,
    ) -> Result<Json<VmView>, ToolError> {
        access.lifecycle("create")?;
        let req = args.into_request().map_err(ToolError::invalid)?;
        let vm = self
            .state
            .create_vm(req, &access.0)
            .await
            .map_err(ToolError::from)?;
        Ok(Json(vm.into()))
    }

    #[tool(
        description = "List the VMs, oldest first, with their state (only those in `state` when given).",
        annotations(title = "List VMs", read_only_hint = true, open_world_hint = false)
    )]
    async fn vm_list(
        &self,
        Parameters(args): Parameters<VmListArgs>,
        access: Access,
    ) -> Result<Json<VmList>, ToolError> {
        let state = parse_state(args.state.as_deref()).map_err(ToolError::invalid)?;
        let vms = self.state.vms.list(state).await?;
        Ok(Json(VmList {
            vms: vms
                .into_iter()
                .filter(|v| access.0.sees(v.id))
                .map(VmView::from)
                .collect(),
        }))
    }

    #[tool(
        description = "Show one VM: its state, resources, network, its latest state changes with their reasons (why a boot failed or a VM crashed) and its last boot time.",
        annotations(title = "Show a VM", read_only_hint = true, open_world_hint = false)
    )]
    async fn vm_show(
        &self,
        Parameters(args): Parameters<VmArgs>,
        access: Access,
    ) -> Result<Json<VmDetail>, ToolError> {
        let id = self.visible_vm(&access, &args.vm).await?.to_string();
        let vm = self.state.vms.get(&id).await?;
        let history = self.state.vms.history(&id).await?;
        let boots = self.state.vms.boots(&id).await?;
        let skip = history.len().saturating_sub(SHOWN_TRANSITIONS);
        let recent_history = history
            .into_iter()
            .skip(skip)
            .map(|t| {
                let from = t.from.map_or("(new)".to_string(), |s| s.to_string());
                format!("{} {from} -> {}: {}", t.at, t.to, t.reason)
            })
            .collect();
        let last_boot = boots.last().map(|b| match b.agent_ready_ms {
            Some(ms) => format!(
                "{}: ready after {ms} ms ({}/{}), {}",
                b.started_at, b.backend, b.accel, b.outcome
            ),
            None => format!("{}: {}", b.started_at, b.outcome),
        });
        Ok(Json(VmDetail {
            vm: vm.into(),
            recent_history,
            last_boot,
        }))
    }

    #[tool(
        description = "Boot a VM that is created, stopped, crashed or failed; returns once its guest agent answers (state running). A failed boot's reason is in the error and in vm_show.",
        annotations(
            title = "Start a VM",
            destructive_hint = false,
            open_world_hint = false
        )
    )]
    async fn vm_start(
        &self,
        Parameters(args): Parameters<VmArgs>,
        access: Access,
    ) -> Result<Json<VmView>, ToolError> {
        let id = self.visible_vm(&access, &args.vm).await?.to_string();
        Ok(Json(self.state.lifecycle.start(&id).await?.into()))
    }

    #[tool(
        description = "Shut a running VM down (the guest powers off; forced after a timeout). Its disk is kept; vm_start boots it again. Processes in it end and /tmp is lost.",
        annotations(title = "Stop a VM", destructive_hint = true, open_world_hint = false)
    )]
    async fn vm_stop(
        &self,
        Parameters(args): Parameters<VmArgs>,
        access: Access,
    ) -> Result<Json<VmView>, ToolError> {
        let id = self.visible_vm(&access, &args.vm).await?.to_string();
        Ok(Json(self.state.lifecycle.stop(&id).await?.into()))
    }

    #[tool(
        description = "Delete a VM that is not running (stop it first), with its disk unless keep_drives is true. This cannot be undone.",
        annotations(
            title = "Delete a VM",
            destructive_hint = true,
            open_world_hint = false
        )
    )]
    async fn vm_delete(
        &self,
        Parameters(args): Parameters<VmDeleteArgs>,
        access: Access,
    ) -> Result<Json<Deleted>, ToolError> {
        access.lifecycle("delete")?;
        let id = self.visible_vm(&access, &args.vm).await?.to_string();
        self.state.lifecycle.delete(&id, args.keep_drives).await?;
        Ok(Json(Deleted { deleted: args.vm }))
    }

    #[tool(
        description = "List the images VMs can be created from (the `image` of vm_create). `default`, a small busybox Linux, is built on first use even when not listed.",
        annotations(title = "List images", read_only_hint = true, open_world_hint = false)
    )]
    async fn image_list(&self) -> Result<Json<ImageList>, ToolError> {
        let images = self.state.images.list().await?;
        Ok(Json(ImageList {
            images: images
                .into_iter()
                .map(|i| ImageView {
                    name: i.name,
                    id: i.id.to_string(),
                    state: i.state.to_string(),
                    size_bytes: i.size_bytes,
                    created_at: i.created_at,
                })
                .collect(),
        }))
    }
}
