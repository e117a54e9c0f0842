//! `nexusctl network <verb>` and `nexusctl vm network`.

use nexus_lib::api::{EgressPolicy, NetworkInfo, UpdateVmNetwork, VmNetwork};
use nexus_lib::client::{Client, ClientError};

use crate::cli::{NetworkCommand, VmNetworkArgs};
use crate::output::{Printer, fields, table};

/// Runs a `network` verb.
pub async fn run(client: &Client, out: Printer, cmd: NetworkCommand) -> Result<(), ClientError> {
    match cmd {
        NetworkCommand::Show => {
            let info = client.network().await?;
            out.print(&info, || show(&info));
        }
        NetworkCommand::Gc | NetworkCommand::Down => {
            let verb = if matches!(cmd, NetworkCommand::Gc) {
                "gc"
            } else {
                "down"
            };
            let done = client.network_action(verb).await?;
            out.print(&done, || {
                if done.removed.is_empty() {
                    "nothing to remove\n".to_owned()
                } else {
                    done.removed
                        .iter()
                        .map(|r| format!("removed {r}\n"))
                        .collect()
                }
            });
        }
    }
    Ok(())
}

/// `vm network NAME [flags]`: shows the VM's network, or replaces its egress policy.
pub async fn vm_network(
    client: &Client,
    out: Printer,
    args: VmNetworkArgs,
) -> Result<(), ClientError> {
    let policy = if args.allow_all {
        Some(EgressPolicy::AllowAll)
    } else {
        args.egress.policy()
    };
    let vm = match policy {
        Some(egress) => {
            client
                .update_vm_network(&args.vm, &UpdateVmNetwork { egress })
                .await?
        }
        None => client.get_vm(&args.vm).await?,
    };
    out.print(&vm.network, || match &vm.network {
        Some(net) => vm_network_fields(net),
        None => "network: none\n".to_owned(),
    });
    Ok(())
}

/// The network lines of `vm show`.
pub fn vm_network_fields(net: &VmNetwork) -> String {
    let mut pairs = vec![("network", net.mode.as_str().to_owned())];
    if let Some(ip) = net.ip {
        let prefix = net.prefix.map_or(String::new(), |p| format!("/{p}"));
        let gw = net.gateway.map_or(String::new(), |g| format!(" via {g}"));
        pairs.push(("  address", format!("{ip}{prefix}{gw}")));
    }
    if let Some(mac) = &net.mac {
        pairs.push(("  mac", mac.clone()));
    }
    if let Some(tap) = &net.tap {
        pairs.push(("  tap", tap.clone()));
    }
    for p in &net.publish {
        pairs.push(("  publish", p.to_string()));
    }
    pairs.push(("  egress", net.egress.summary()));
    fields(&pairs)
}

fn show(info: &NetworkInfo) -> String {
    let mut text = fields(&[
        (
            "bridge",
            format!("{} ({})", info.bridge, if info.up { "up" } else { "down" }),
        ),
        ("subnet", format!("{} via {}", info.subnet, info.gateway)),
        ("uplink", info.uplink.clone().unwrap_or_else(|| "-".into())),
        ("nftables", format!("inet {0}, bridge {0}", info.table)),
        ("mtu", info.mtu.to_string()),
        ("dns upstream", info.dns_upstream.join(", ")),
    ]);
    let rows: Vec<Vec<String>> = info
        .vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.ip.to_string(),
                v.mac.clone(),
                format!("{}{}", v.tap, if v.tap_present { "" } else { " (absent)" }),
            ]
        })
        .collect();
    if !rows.is_empty() {
        text.push('\n');
        text += &table(&["VM", "IP", "MAC", "TAP"], &rows);
    }
    text
}
