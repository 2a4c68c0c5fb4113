#!/usr/bin/env node
// Offline validation of rendered Kubernetes manifests (kubectl kustomize output), no cluster needed:
//  1. every object against the Kubernetes API schema (kubernetes-models 4.5.1; it catches wrong
//     types, missing required fields and unknown kinds, NOT unknown fields);
//  2. what pagepoold's deployment relies on (--project): native gRPC probes on 50051, Prometheus
//     annotations for 9464, non-root, the generators as an Indexed Job, every ConfigMap reference
//     resolving to a ConfigMap of the same rendering.
// Usage: node validate_manifests.js [--project] FILE.yaml...   exit 0 when all are valid.
"use strict";
const fs = require("fs");
const YAML = require("yaml");

let project = false;
const files = [];
for (const a of process.argv.slice(2)) {
  if (a === "--project") project = true;
  else files.push(a);
}
if (files.length === 0) {
  console.error("usage: validate_manifests.js [--project] FILE.yaml...");
  process.exit(2);
}

let bad = 0, objects = 0;
const fail = (where, msg) => { bad++; console.log(`FAIL ${where}: ${msg}`); };

function checkProject(f, docs) {
  const byKind = (k) => docs.filter((o) => o.kind === k);
  const configMaps = new Set(byKind("ConfigMap").map((o) => o.metadata.name));
  const deps = byKind("Deployment").filter((o) => o.metadata.name === "pagepoold");
  if (deps.length !== 1) return fail(f, "no Deployment pagepoold");
  const d = deps[0], where = `${f} Deployment/pagepoold`;
  const pod = d.spec.template;
  const c = (pod.spec.containers || []).find((x) => x.name === "pagepoold");
  if (!c) return fail(where, "no container pagepoold");
  for (const p of ["readinessProbe", "livenessProbe"]) {
    if (!c[p] || !c[p].grpc || c[p].grpc.port !== 50051) fail(where, `${p} is not a grpc probe on 50051`);
  }
  const ann = pod.metadata.annotations || {};
  if (ann["prometheus.io/scrape"] !== "true" || ann["prometheus.io/port"] !== "9464") {
    fail(where, "pod template lacks prometheus.io/scrape=true, prometheus.io/port=9464");
  }
  const ports = (c.ports || []).map((p) => p.containerPort);
  if (!ports.includes(50051) || !ports.includes(9464)) fail(where, "container ports 50051 and 9464 missing");
  if (!(pod.spec.securityContext || {}).runAsNonRoot) fail(where, "runAsNonRoot is not set");

  const svcs = byKind("Service");
  const jobs = byKind("Job");
  if (svcs.length === 0 && jobs.length === 0) return;  // the pod-only (podman) rendering
  const svc = svcs.find((o) => o.metadata.name === "pagepoold");
  if (!svc) fail(f, "no Service pagepoold (the generators' target)");
  else {
    const sel = svc.spec.selector || {}, labels = pod.metadata.labels || {};
    for (const [k, v] of Object.entries(sel)) {
      if (labels[k] !== v) fail(`${f} Service/pagepoold`, `selector ${k}=${v} does not match the pod`);
    }
  }
  const job = jobs.find((o) => o.metadata.name === "ppctl-load");
  if (!job) return fail(f, "no Job ppctl-load");
  const jw = `${f} Job/ppctl-load`;
  if (job.spec.completionMode !== "Indexed") fail(jw, "completionMode is not Indexed");
  if (!(job.spec.parallelism >= 1) || job.spec.parallelism !== job.spec.completions) {
    fail(jw, `parallelism ${job.spec.parallelism} != completions ${job.spec.completions}`);
  }
  for (const jc of job.spec.template.spec.containers) {
    for (const ef of jc.envFrom || []) {
      if (ef.configMapRef && !configMaps.has(ef.configMapRef.name)) {
        fail(jw, `envFrom ConfigMap ${ef.configMapRef.name} is not in this rendering`);
      }
    }
    const target = (jc.env || []).find((e) => e.name === "PPCTL_TARGET");
    if (!target || !svc || !target.value.startsWith(`${svc.metadata.name}:`)) {
      fail(jw, "PPCTL_TARGET does not name the Service");
    }
  }
}

for (const f of files) {
  const docs = [];
  for (const d of YAML.parseAllDocuments(fs.readFileSync(f, "utf8"))) {
    if (d.errors && d.errors.length) { fail(f, d.errors[0].message); continue; }
    const o = d.toJS();
    if (!o) continue;
    objects++;
    docs.push(o);
    let C;
    try { C = require(`kubernetes-models/${o.apiVersion}`)[o.kind]; } catch (e) { /* unknown */ }
    try {
      if (!C) throw new Error(`unknown kind ${o.apiVersion}/${o.kind}`);
      new C(o).validate();
    } catch (e) {
      fail(`${f} ${o.kind}/${o.metadata && o.metadata.name}`,
           e.errors ? e.errors.map((x) => `${x.instancePath} ${x.message}`).join("; ") : e.message);
    }
  }
  if (project) checkProject(f, docs);
}
console.log(`validate_manifests: ${objects} objects in ${files.length} files, ${bad} problems`);
process.exit(bad ? 1 : 0);
