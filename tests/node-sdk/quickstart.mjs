// The Milvus Node SDK's quickstart through both of its clients: MilvusClient (gRPC) and
// HttpClient (REST v2). Every step is checked here; exits non-zero on the first failure.
//   node quickstart.mjs http://127.0.0.1:19530 [TOKEN]
import assert from 'node:assert/strict';
import { MilvusClient, HttpClient } from '@zilliz/milvus2-sdk-node';

const [uri, token] = process.argv.slice(2);
const rows = [...Array(20).keys()].map((i) => ({
  id: i,
  vector: [i, 1, 0, 0.5],
  color: i % 2 ? 'red' : 'blue',
}));
const ok = (r, what) => {
  const code = r.status ? r.status.error_code ?? r.status.code : r.error_code ?? r.code;
  assert.ok(code === 'Success' || code === 0 || code === undefined, `${what}: ${JSON.stringify(r)}`);
  return r;
};

// ---------------------------------------------------------------- gRPC
const c = new MilvusClient({ address: uri, token });
ok(await c.createCollection({ collection_name: 'node_grpc', dimension: 4, metric_type: 'L2', consistency_level: 'Strong' }), 'create');
const ins = ok(await c.insert({ collection_name: 'node_grpc', data: rows }), 'insert');
assert.equal(Number(ins.insert_cnt), 20);
const s = ok(await c.search({ collection_name: 'node_grpc', data: [[3, 1, 0, 0.5]], limit: 3, output_fields: ['id', 'color'] }), 'search');
const all = ok(await c.search({ collection_name: 'node_grpc', data: [[3, 1, 0, 0.5]], limit: 1 }), 'search *');
assert.equal(Number(all.results[0].id), 3, 'the SDK asks for * by default');
assert.deepEqual(s.results.map((h) => Number(h.id)), [3, 2, 4]);
assert.equal(s.results[0].color, 'red');
const q = ok(await c.query({ collection_name: 'node_grpc', filter: 'color == "blue"', output_fields: ['count(*)'] }), 'query');
assert.equal(Number(q.data[0]['count(*)']), 10);
ok(await c.delete({ collection_name: 'node_grpc', filter: 'id < 5' }), 'delete');
const q2 = ok(await c.query({ collection_name: 'node_grpc', filter: '', output_fields: ['count(*)'] }), 'count');
assert.equal(Number(q2.data[0]['count(*)']), 15);
const d = ok(await c.describeCollection({ collection_name: 'node_grpc' }), 'describe');
assert.deepEqual(d.schema.fields.map((f) => f.name), ['id', 'vector']);
ok(await c.dropCollection({ collection_name: 'node_grpc' }), 'drop');

// ---------------------------------------------------------------- REST (HttpClient)
const h = new HttpClient({ endpoint: uri, token });
ok(await h.createCollection({ collectionName: 'node_http', dimension: 4, metricType: 'L2' }), 'http create');
ok(await h.insert({ collectionName: 'node_http', data: rows }), 'http insert');
const hs = ok(await h.search({ collectionName: 'node_http', data: [[3, 1, 0, 0.5]], limit: 3, outputFields: ['color'] }), 'http search');
assert.deepEqual(hs.data.map((x) => Number(x.id)), [3, 2, 4]);
const hq = ok(await h.query({ collectionName: 'node_http', filter: 'color == "red"', outputFields: ['count(*)'] }), 'http query');
assert.equal(Number(hq.data[0]['count(*)']), 10);
ok(await h.createAlias({ collectionName: 'node_http', aliasName: 'node_alias' }), 'http alias');
const al = ok(await h.describeAlias({ aliasName: 'node_alias' }), 'http describe alias');
assert.equal(al.data.collectionName, 'node_http');
ok(await h.dropAlias({ aliasName: 'node_alias' }), 'http drop alias');
const dbs = ok(await h.listDatabases(), 'http databases');
assert.ok(dbs.data.includes('default'));
ok(await h.dropCollection({ collectionName: 'node_http' }), 'http drop');
console.log('node sdk quickstart: ok');
