// Validates Kubernetes objects (a JSON array on stdin) against the schemas of their kinds,
// from pinned npm packages: kubernetes-models for core kinds, @kubernetes-models/* for the
// Flux, External Secrets and Prometheus Operator CRDs. Unknown fields are errors (checked
// against the packages' TypeScript types, see strict.mjs), and so is a kind with no schema.
// Prints one line per problem; exits 1 if there is any.
import { readFileSync } from "node:fs";
import { unknownFields } from "./strict.mjs";

const packages = {
  "kustomize.toolkit.fluxcd.io": "@kubernetes-models/flux-cd",
  "helm.toolkit.fluxcd.io": "@kubernetes-models/flux-cd",
  "source.toolkit.fluxcd.io": "@kubernetes-models/flux-cd",
  "external-secrets.io": "@kubernetes-models/external-secrets",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

const objects = JSON.parse(readFileSync(0, "utf8"));
const problems = [];
const typed = [];
for (const object of objects) {
  const label = `${object.kind} ${object.metadata?.namespace ?? ""}/${object.metadata?.name}`;
  const [group, version] = object.apiVersion.includes("/") ? object.apiVersion.split("/") : ["", object.apiVersion];
  const module = group === "" ? `kubernetes-models/${version}`
    : packages[group] ? `${packages[group]}/${group}/${version}`
    : `kubernetes-models/${group}/${version}`;
  let exported;
  try {
    exported = (await import(module))[object.kind];
  } catch {
    exported = undefined;
  }
  if (!exported) {
    problems.push(`${label}: no schema for ${object.apiVersion} ${object.kind}`);
    continue;
  }
  try {
    new exported(object).validate();
  } catch (e) {
    problems.push(`${label}: ${e.message}`);
  }
  typed.push({ module, exportName: object.kind, object, label });
}
problems.push(...unknownFields(typed));
for (const p of problems) console.log(p);
process.exit(problems.length ? 1 : 0);
