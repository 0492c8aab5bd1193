// Unknown fields, checked against the TypeScript types the kubernetes-models packages ship:
// their JSON-schema validators accept any extra property, so a misspelt field (`spec.intervall`)
// would pass them. Walks each object alongside its type and reports every key the type lacks.
import ts from "typescript";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

/** Unknown-field problems of `objects`, each with the module and export its kind maps to. */
export function unknownFields(entries) {
  const source = entries
    .map((e, i) => `import type { ${e.exportName} as T${i} } from "${e.module}";\nexport declare const v${i}: T${i};`)
    .join("\n");
  const fileName = new URL("./__strict_check.ts", import.meta.url).pathname;
  const options = {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
  };
  const host = ts.createCompilerHost(options);
  const readFile = host.readFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  host.readFile = (f) => (f === fileName ? source : readFile(f));
  host.fileExists = (f) => f === fileName || fileExists(f);
  const program = ts.createProgram([fileName], options, host);
  const checker = program.getTypeChecker();
  const file = program.getSourceFile(fileName);
  const declarations = new Map();
  file.forEachChild((node) => {
    if (ts.isVariableStatement(node)) {
      for (const d of node.declarationList.declarations) declarations.set(d.name.text, d);
    }
  });
  const problems = [];
  entries.forEach((entry, i) => {
    const decl = declarations.get(`v${i}`);
    const type = checker.getTypeAtLocation(decl);
    if (type.flags & ts.TypeFlags.Any) {
      problems.push(`${entry.label}: no TypeScript type for ${entry.module} ${entry.exportName}`);
      return;
    }
    walk(checker, entry.object, type, entry.label, decl, problems);
  });
  return problems;
}

function walk(checker, value, type, path, node, problems) {
  if (value === null || typeof value !== "object") return;
  type = checker.getNonNullableType(type);
  if (type.flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return;
  if (type.isUnion()) {
    // An object value against a union: use the object members.
    const objects = type.types.filter((t) => t.flags & ts.TypeFlags.Object);
    if (objects.length !== 1) return;
    type = objects[0];
  }
  if (Array.isArray(value)) {
    const element = checker.isArrayType(type) ? checker.getTypeArguments(type)[0] : undefined;
    if (element) value.forEach((v, i) => walk(checker, v, element, `${path}[${i}]`, node, problems));
    return;
  }
  // An object type with no declared properties is free-form (x-kubernetes-preserve-unknown-
  // fields, such as a HelmRelease's values).
  if (checker.getPropertiesOfType(type).length === 0) return;
  const indexType = checker.getIndexTypeOfType(type, ts.IndexKind.String);
  for (const [key, child] of Object.entries(value)) {
    const property = checker.getPropertyOfType(type, key);
    if (property) {
      walk(checker, child, checker.getTypeOfSymbolAtLocation(property, node), `${path}.${key}`, node, problems);
    } else if (indexType) {
      walk(checker, child, indexType, `${path}.${key}`, node, problems);
    } else {
      problems.push(`${path}.${key}: unknown field`);
    }
  }
}
