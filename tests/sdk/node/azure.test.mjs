// keygate's Azure OpenAI front door through the official openai Node SDK
// (`AzureOpenAI`). Run by tests/sdk/test_node_sdk.py, which starts keygate and
// the mock upstream and passes, in the environment:
//   KEYGATE_URL          keygate's base URL (the Azure endpoint)
//   KEYGATE_TEST_KEY     a keygate project key
//   KEYGATE_TEST_EXPECT  JSON: what the mock answers (chatContent, streamPieces,
//                        totalTokens, embedding, models) and the region
// By hand: `node --test tests/sdk/node/azure.test.mjs` with those set.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { AuthenticationError, AzureOpenAI, NotFoundError, OpenAI } from 'openai';

const endpoint = requiredEnv('KEYGATE_URL');
const apiKey = requiredEnv('KEYGATE_TEST_KEY');
const expect = JSON.parse(requiredEnv('KEYGATE_TEST_EXPECT'));
const apiVersion = '2024-10-21';
const messages = [{ role: 'user', content: 'Say hello' }];

const INVALID_KEY = {
  code: '401',
  message:
    'Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.',
};

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through tests/sdk/test_node_sdk.py)`);
  return value;
}

function azure(options = {}) {
  return new AzureOpenAI({ endpoint, apiKey, apiVersion, maxRetries: 0, timeout: 10_000, ...options });
}

function assertAzureHeaders(headers) {
  assert.match(headers.get('apim-request-id') ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i);
  assert.equal(headers.get('x-ms-region'), expect.region);
  assert.ok(headers.get('x-ms-client-request-id'));
  assert.match(headers.get('x-request-id') ?? '', /^req_[0-9a-f]{32}$/);
}

for (const deployment of ['prod-gpt4o', undefined]) {
  const label = deployment ? 'with deployment' : 'model as deployment';

  test(`chat completion (${label})`, async () => {
    const client = azure({ deployment });
    const { data, response } = await client.chat.completions
      .create({ model: 'prod-gpt4o', messages })
      .withResponse();
    assert.equal(new URL(response.url).pathname, '/openai/deployments/prod-gpt4o/chat/completions');
    assert.equal(new URL(response.url).searchParams.get('api-version'), apiVersion);
    assertAzureHeaders(response.headers);
    assert.equal(data.choices[0].message.content, expect.chatContent);
    assert.equal(data.usage.total_tokens, expect.totalTokens);
  });

  test(`streaming chat (${label})`, async () => {
    const client = azure({ deployment });
    const stream = await client.chat.completions.create({ model: 'prod-gpt4o', messages, stream: true });
    const pieces = [];
    let first;
    for await (const chunk of stream) {
      first ??= chunk;
      assert.equal(chunk.usage ?? null, null, 'no usage chunk unless asked for');
      const content = chunk.choices[0]?.delta?.content;
      if (content) pieces.push(content);
    }
    assert.equal(first.choices[0].delta.role, 'assistant');
    assert.deepEqual(pieces, expect.streamPieces);
  });

  test(`embeddings (${label})`, async () => {
    const client = azure({ deployment: deployment && 'embed' });
    const { data, response } = await client.embeddings
      .create({ model: 'embed', input: ['one', 'two'] })
      .withResponse();
    assert.equal(new URL(response.url).pathname, '/openai/deployments/embed/embeddings');
    assertAzureHeaders(response.headers);
    assert.deepEqual(
      data.data.map((d) => d.embedding),
      [expect.embedding, expect.embedding],
    );
  });
}

test('streaming chat with usage', async () => {
  const stream = await azure({ deployment: 'prod-gpt4o' }).chat.completions.create({
    model: 'prod-gpt4o',
    messages,
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.equal(text, expect.streamPieces.join(''));
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.total_tokens, expect.totalTokens);
});

test('models list', async () => {
  const ids = [];
  for await (const model of azure().models.list()) ids.push(model.id);
  for (const id of expect.models) assert.ok(ids.includes(id), `${id} missing from ${ids}`);
});

test('wrong key is an AuthenticationError with Azure body', async () => {
  const client = azure({ apiKey: '0123456789abcdef0123456789abcdef', deployment: 'prod-gpt4o' });
  await assert.rejects(client.chat.completions.create({ model: 'prod-gpt4o', messages }), (err) => {
    assert.ok(err instanceof AuthenticationError, `${err?.constructor?.name}: ${err}`);
    assert.equal(err.status, 401);
    assert.equal(err.code, '401');
    assert.deepEqual(err.error, INVALID_KEY);
    assert.equal(err.headers.get('content-length'), '224');
    assertAzureHeaders(err.headers);
    return true;
  });
});

test('unknown deployment is a NotFoundError', async () => {
  await assert.rejects(azure({ deployment: 'nope' }).chat.completions.create({ model: 'nope', messages }), (err) => {
    assert.ok(err instanceof NotFoundError, `${err?.constructor?.name}: ${err}`);
    assert.equal(err.status, 404);
    assert.equal(err.code, 'DeploymentNotFound');
    assertAzureHeaders(err.headers);
    return true;
  });
});

test('unsupported api-version is Azure\'s 404', async () => {
  const client = azure({ deployment: 'prod-gpt4o', apiVersion: '0613' });
  await assert.rejects(client.chat.completions.create({ model: 'prod-gpt4o', messages }), (err) => {
    assert.ok(err instanceof NotFoundError, `${err?.constructor?.name}: ${err}`);
    assert.deepEqual(err.error, { code: '404', message: 'Resource not found' });
    return true;
  });
});

test('the same key works with the OpenAI client on /v1', async () => {
  const client = new OpenAI({ baseURL: `${endpoint}/v1`, apiKey, maxRetries: 0, timeout: 10_000 });
  const completion = await client.chat.completions.create({ model: 'gpt-4o', messages });
  assert.equal(completion.choices[0].message.content, expect.chatContent);
});
