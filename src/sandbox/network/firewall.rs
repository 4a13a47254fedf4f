//! The iptables rules shared by every isolated sandbox.
//!
//! Every host-side interface matches `ak+` and every sandbox address lies in 10.200.0.0/16, so
//! one static rule set covers all sandboxes. It lives in three chains of its own, each jumped to
//! by the first rule of a built-in chain:
//!
//! - `AGENTKERNEL-INPUT` (filter, from INPUT) drops everything a sandbox sends to the host.
//! - `AGENTKERNEL-FORWARD` (filter, from FORWARD) drops traffic between sandboxes and to
//!   169.254.0.0/16, then accepts the sandboxes' outbound traffic and the replies to it.
//! - `AGENTKERNEL-POSTROUTING` (nat, from POSTROUTING) masquerades the sandboxes' traffic that
//!   leaves the host.
//!
//! The jumps come first, so that rules and DROP policies of other tools neither accept nor
//! drop sandbox traffic before these rules see it.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::generation::{Stamp, saved_by_nf_tables};

/// One chain of the rule set and the built-in chain that jumps to it.
struct ChainRules {
    table: &'static str,
    /// Built-in chain whose first rule is the jump.
    parent: &'static str,
    name: &'static str,
    /// Rules in order, as `iptables-save` prints them after `-A <name>`.
    rules: &'static [&'static str],
}

const CHAINS: [ChainRules; 3] = [
    ChainRules {
        table: "filter",
        parent: "INPUT",
        name: "AGENTKERNEL-INPUT",
        rules: &["-i ak+ -j DROP"],
    },
    ChainRules {
        table: "filter",
        parent: "FORWARD",
        name: "AGENTKERNEL-FORWARD",
        rules: &[
            "-i ak+ -o ak+ -j DROP",
            "-d 169.254.0.0/16 -i ak+ -j DROP",
            "-i ak+ -j ACCEPT",
            "-o ak+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ],
    },
    ChainRules {
        table: "nat",
        parent: "POSTROUTING",
        name: "AGENTKERNEL-POSTROUTING",
        rules: &["-s 10.200.0.0/16 ! -o ak+ -j MASQUERADE"],
    },
];

/// Tables that [`CHAINS`] uses, in the order `iptables-restore` input lists them.
const TABLES: [&str; 2] = ["filter", "nat"];

/// Installs the rule set unless `iptables-save` shows it complete, with each jump first in its
/// built-in chain. Costs one `iptables-save` when nothing is missing, and nothing while the
/// nftables ruleset is unchanged since a complete check (see [`Stamp`]). The caller holds the
/// network lock.
pub(super) fn ensure_installed() -> anyhow::Result<()> {
    // Read before the check, so a change after this point gives the next run another stamp.
    let stamp = Stamp::current();
    if stamp.is_some() && stamp == Stamp::recorded() {
        return Ok(());
    }
    let saved = iptables_save()?;
    let ruleset = Ruleset::parse(&saved);
    if ruleset.is_installed() {
        if let (Some(stamp), true) = (stamp, saved_by_nf_tables(&saved)) {
            stamp.record();
        }
        return Ok(());
    }
    tracing::info!("installing the iptables rules of isolated sandboxes");
    iptables_restore(&ruleset.install_script())
        .context("failed to install the iptables rules of isolated sandboxes")?;
    let ruleset = Ruleset::parse(&iptables_save()?);
    if !ruleset.is_installed() {
        bail!(
            "the iptables rules of isolated sandboxes are still incomplete after installing them"
        );
    }
    Ok(())
}

/// Removes the rule set, the jumps and the chains, and returns whether any of them existed.
/// Rules that are already gone are skipped. The caller holds the network lock.
pub(super) fn remove() -> anyhow::Result<bool> {
    Stamp::forget().context("failed to remove the record of the last rule check")?;
    let ruleset = Ruleset::parse(&iptables_save()?);
    let Some(script) = ruleset.removal_script() else {
        return Ok(false);
    };
    iptables_restore(&script)
        .context("failed to remove the iptables rules of isolated sandboxes")?;
    Ok(true)
}

/// The chains and rules of `iptables-save` output.
#[derive(Debug, Default)]
struct Ruleset {
    /// `(table, chain)` of every declared chain.
    chains: Vec<(String, String)>,
    /// `(table, chain, rule)` of every rule in order, with the rule after `-A <chain> `.
    rules: Vec<(String, String, String)>,
}

impl Ruleset {
    fn parse(saved: &str) -> Ruleset {
        let mut ruleset = Ruleset::default();
        let mut table = String::new();
        for line in saved.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = name.trim().to_string();
            } else if let Some(declaration) = line.strip_prefix(':') {
                if let Some(chain) = declaration.split_whitespace().next() {
                    ruleset.chains.push((table.clone(), chain.to_string()));
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, rule) = rule.split_once(' ').unwrap_or((rule, ""));
                ruleset
                    .rules
                    .push((table.clone(), chain.to_string(), rule.to_string()));
            }
        }
        ruleset
    }

    fn has_chain(&self, table: &str, chain: &str) -> bool {
        self.chains.iter().any(|(t, c)| t == table && c == chain)
    }

    fn rules_of<'a>(&'a self, table: &'a str, chain: &'a str) -> impl Iterator<Item = &'a str> {
        self.rules
            .iter()
            .filter(move |(t, c, _)| t == table && c == chain)
            .map(|(_, _, rule)| rule.as_str())
    }

    /// Returns how many rules of `chain.parent` are the plain jump to `chain.name`.
    fn jump_count(&self, chain: &ChainRules) -> usize {
        let jump = jump_rule(chain);
        self.rules_of(chain.table, chain.parent)
            .filter(|rule| same_rule(rule, &jump))
            .count()
    }

    /// Checks that every chain of [`CHAINS`] contains exactly its rules and that the first rule of
    /// its built-in chain jumps to it.
    fn is_installed(&self) -> bool {
        CHAINS.iter().all(|chain| {
            let rules: Vec<&str> = self.rules_of(chain.table, chain.name).collect();
            let first = self.rules_of(chain.table, chain.parent).next();
            self.has_chain(chain.table, chain.name)
                && rules.len() == chain.rules.len()
                && rules
                    .iter()
                    .zip(chain.rules)
                    .all(|(rule, expected)| same_rule(rule, expected))
                && first.is_some_and(|rule| same_rule(rule, &jump_rule(chain)))
        })
    }

    /// Returns `iptables-restore --noflush` input that creates or empties every chain, adds its
    /// rules and moves each jump to the top of its built-in chain.
    fn install_script(&self) -> String {
        let mut script = String::new();
        for table in TABLES {
            script.push_str(&format!("*{table}\n"));
            let chains = CHAINS.iter().filter(|chain| chain.table == table);
            // With --noflush, declaring a chain creates it or empties an existing one.
            for chain in chains.clone() {
                script.push_str(&format!(":{} - [0:0]\n", chain.name));
            }
            for chain in chains.clone() {
                for rule in chain.rules {
                    script.push_str(&format!("-A {} {rule}\n", chain.name));
                }
            }
            for chain in chains {
                for _ in 0..self.jump_count(chain) {
                    script.push_str(&format!("-D {} {}\n", chain.parent, jump_rule(chain)));
                }
                script.push_str(&format!("-I {} 1 {}\n", chain.parent, jump_rule(chain)));
            }
            script.push_str("COMMIT\n");
        }
        script
    }

    /// Returns `iptables-restore --noflush` input that deletes the jumps and the chains that
    /// exist, or `None` when none exists.
    fn removal_script(&self) -> Option<String> {
        let mut script = String::new();
        let mut any = false;
        for table in TABLES {
            let chains: Vec<&ChainRules> =
                CHAINS.iter().filter(|chain| chain.table == table).collect();
            let mut lines = String::new();
            // Declaring a chain empties it, and -X deletes only empty chains.
            for chain in chains
                .iter()
                .filter(|chain| self.has_chain(table, chain.name))
            {
                lines.push_str(&format!(":{} - [0:0]\n", chain.name));
            }
            for chain in &chains {
                for _ in 0..self.jump_count(chain) {
                    lines.push_str(&format!("-D {} {}\n", chain.parent, jump_rule(chain)));
                }
            }
            for chain in chains
                .iter()
                .filter(|chain| self.has_chain(table, chain.name))
            {
                lines.push_str(&format!("-X {}\n", chain.name));
            }
            if !lines.is_empty() {
                any = true;
                script.push_str(&format!("*{table}\n{lines}COMMIT\n"));
            }
        }
        any.then_some(script)
    }
}

fn jump_rule(chain: &ChainRules) -> String {
    format!("-j {}", chain.name)
}

/// Compares two rules in `iptables-save` syntax regardless of the order of their options:
/// `iptables-save` 1.8.9 prints `-d` before `-i`, whatever order they were added in.
fn same_rule(a: &str, b: &str) -> bool {
    rule_options(a) == rule_options(b)
}

/// Splits a rule into its options, each with its values and a preceding `!`, sorted.
fn rule_options(rule: &str) -> Vec<String> {
    let mut options: Vec<String> = Vec::new();
    let mut negated = false;
    for word in rule.split_whitespace() {
        if word == "!" {
            options.push(word.to_string());
            negated = true;
        } else if word.starts_with('-') && !negated {
            options.push(word.to_string());
        } else if let Some(option) = options.last_mut() {
            option.push(' ');
            option.push_str(word);
            negated = false;
        } else {
            options.push(word.to_string());
        }
    }
    options.sort();
    options
}

fn iptables_save() -> anyhow::Result<String> {
    let output = Command::new("iptables-save")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("failed to run iptables-save")?;
    if !output.status.success() {
        bail!(
            "iptables-save failed with {}: {}",
            output.status,
            one_line(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).context("iptables-save printed invalid UTF-8")
}

fn iptables_restore(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run iptables-restore")?;
    child
        .stdin
        .take()
        .context("iptables-restore has no stdin pipe")?
        .write_all(script.as_bytes())
        .context("failed to write to iptables-restore")?;
    let output = child
        .wait_with_output()
        .context("failed to wait for iptables-restore")?;
    if !output.status.success() {
        bail!(
            "iptables-restore failed with {}: {}",
            output.status,
            one_line(&output.stderr)
        );
    }
    Ok(())
}

/// Joins the lines of a tool's error output, so the error stays on one line.
fn one_line(output: &[u8]) -> String {
    String::from_utf8_lossy(output)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iptables-save` output of iptables 1.8.9 (nf_tables) with the rule set installed below
    /// another tool's rules.
    const INSTALLED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Fri Dec  4 18:52:31 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:AGENTKERNEL-FORWARD - [0:0]
:AGENTKERNEL-INPUT - [0:0]
-A INPUT -j AGENTKERNEL-INPUT
-A INPUT -i lo -j ACCEPT
-A FORWARD -j AGENTKERNEL-FORWARD
-A AGENTKERNEL-FORWARD -i ak+ -o ak+ -j DROP
-A AGENTKERNEL-FORWARD -d 169.254.0.0/16 -i ak+ -j DROP
-A AGENTKERNEL-FORWARD -i ak+ -j ACCEPT
-A AGENTKERNEL-FORWARD -o ak+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A AGENTKERNEL-INPUT -i ak+ -j DROP
COMMIT
# Completed on Fri Dec  4 18:52:31 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:AGENTKERNEL-POSTROUTING - [0:0]
-A POSTROUTING -j AGENTKERNEL-POSTROUTING
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A AGENTKERNEL-POSTROUTING -s 10.200.0.0/16 ! -o ak+ -j MASQUERADE
COMMIT
";

    const EMPTY: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn complete_rule_set_is_installed() {
        assert!(Ruleset::parse(INSTALLED).is_installed());
    }

    #[test]
    fn option_order_does_not_matter() {
        let reordered = INSTALLED.replace(
            "-d 169.254.0.0/16 -i ak+ -j DROP",
            "-i ak+ -d 169.254.0.0/16 -j DROP",
        );
        assert!(Ruleset::parse(&reordered).is_installed());
    }

    #[test]
    fn missing_or_changed_rules_are_detected() {
        let cases = [
            ("-A AGENTKERNEL-INPUT -i ak+ -j DROP\n", ""),
            ("-A AGENTKERNEL-FORWARD -i ak+ -o ak+ -j DROP\n", ""),
            (
                "-A AGENTKERNEL-POSTROUTING -s 10.200.0.0/16 ! -o ak+ -j MASQUERADE\n",
                "",
            ),
            ("-A POSTROUTING -j AGENTKERNEL-POSTROUTING\n", ""),
            (":AGENTKERNEL-INPUT - [0:0]\n", ""),
            // Negation moved to another option.
            (
                "-s 10.200.0.0/16 ! -o ak+ -j MASQUERADE",
                "! -s 10.200.0.0/16 -o ak+ -j MASQUERADE",
            ),
            // An accept rule before the drop rules.
            (
                "-A AGENTKERNEL-FORWARD -i ak+ -o ak+ -j DROP\n",
                "-A AGENTKERNEL-FORWARD -i ak+ -j ACCEPT\n-A AGENTKERNEL-FORWARD -i ak+ -o ak+ -j DROP\n",
            ),
            // Another tool's rule above the jump.
            (
                "-A INPUT -j AGENTKERNEL-INPUT\n",
                "-A INPUT -i ak+ -j ACCEPT\n-A INPUT -j AGENTKERNEL-INPUT\n",
            ),
        ];
        for (from, to) in cases {
            assert!(INSTALLED.contains(from), "{from}");
            let changed = INSTALLED.replacen(from, to, 1);
            assert!(!Ruleset::parse(&changed).is_installed(), "{from} -> {to}");
        }
        assert!(!Ruleset::parse(EMPTY).is_installed());
    }

    #[test]
    fn install_script_creates_everything() {
        assert_eq!(
            Ruleset::parse(EMPTY).install_script(),
            "*filter\n\
             :AGENTKERNEL-INPUT - [0:0]\n\
             :AGENTKERNEL-FORWARD - [0:0]\n\
             -A AGENTKERNEL-INPUT -i ak+ -j DROP\n\
             -A AGENTKERNEL-FORWARD -i ak+ -o ak+ -j DROP\n\
             -A AGENTKERNEL-FORWARD -d 169.254.0.0/16 -i ak+ -j DROP\n\
             -A AGENTKERNEL-FORWARD -i ak+ -j ACCEPT\n\
             -A AGENTKERNEL-FORWARD -o ak+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -I INPUT 1 -j AGENTKERNEL-INPUT\n\
             -I FORWARD 1 -j AGENTKERNEL-FORWARD\n\
             COMMIT\n\
             *nat\n\
             :AGENTKERNEL-POSTROUTING - [0:0]\n\
             -A AGENTKERNEL-POSTROUTING -s 10.200.0.0/16 ! -o ak+ -j MASQUERADE\n\
             -I POSTROUTING 1 -j AGENTKERNEL-POSTROUTING\n\
             COMMIT\n"
        );
    }

    #[test]
    fn install_script_moves_existing_jumps() {
        let script = Ruleset::parse(INSTALLED).install_script();
        assert!(
            script.contains("-D INPUT -j AGENTKERNEL-INPUT\n-I INPUT 1 -j AGENTKERNEL-INPUT\n"),
            "{script}"
        );
        assert!(
            script.contains(
                "-D POSTROUTING -j AGENTKERNEL-POSTROUTING\n\
                 -I POSTROUTING 1 -j AGENTKERNEL-POSTROUTING\n"
            ),
            "{script}"
        );
        assert_eq!(script.matches("-D ").count(), 3, "{script}");
    }

    #[test]
    fn removal_script_deletes_what_exists() {
        assert_eq!(
            Ruleset::parse(INSTALLED).removal_script().as_deref(),
            Some(
                "*filter\n\
                 :AGENTKERNEL-INPUT - [0:0]\n\
                 :AGENTKERNEL-FORWARD - [0:0]\n\
                 -D INPUT -j AGENTKERNEL-INPUT\n\
                 -D FORWARD -j AGENTKERNEL-FORWARD\n\
                 -X AGENTKERNEL-INPUT\n\
                 -X AGENTKERNEL-FORWARD\n\
                 COMMIT\n\
                 *nat\n\
                 :AGENTKERNEL-POSTROUTING - [0:0]\n\
                 -D POSTROUTING -j AGENTKERNEL-POSTROUTING\n\
                 -X AGENTKERNEL-POSTROUTING\n\
                 COMMIT\n"
            )
        );
        assert_eq!(Ruleset::parse(EMPTY).removal_script(), None);
    }

    #[test]
    fn options_keep_negation_and_values() {
        assert_eq!(
            rule_options("-s 10.200.0.0/16 ! -o ak+ -j MASQUERADE"),
            ["! -o ak+", "-j MASQUERADE", "-s 10.200.0.0/16"]
        );
    }
}
