// keygate's built-in mock upstream (`--upstream mock`) through the official
// openai Node SDK's helpers. Run by tests/sdk/test_mock.py, which starts keygate
// on the mock and passes, in the environment:
//   KEYGATE_URL       keygate's base URL
//   KEYGATE_TEST_KEY  a keygate project key

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { NotFoundError, OpenAI } from 'openai';

const ANSWER = 'This is a synthetic answer from the keygate mock upstream.';
const client = new OpenAI({
  baseURL: `${requiredEnv('KEYGATE_URL')}/v1`,
  apiKey: requiredEnv('KEYGATE_TEST_KEY'),
  maxRetries: 0,
  timeout: 10_000,
});
const weather = {
  type: 'object',
  properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
  required: ['city', 'unit'],
  additionalProperties: false,
};

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through tests/sdk/test_mock.py)`);
  return value;
}

test('the Responses stream helper', async () => {
  const stream = client.responses.stream({ model: 'gpt-4o-mini', input: 'Say hello' });
  const kinds = [];
  for await (const event of stream) kinds.push(event.type);
  const final = await stream.finalResponse();
  assert.deepEqual(kinds.slice(0, 4), [
    'response.created',
    'response.in_progress',
    'response.output_item.added',
    'response.content_part.added',
  ]);
  assert.equal(kinds.at(-1), 'response.completed');
  assert.equal(final.output_text, ANSWER);
  assert.equal(final.usage.output_tokens, 10);
});

test('a streamed Responses function call', async () => {
  const stream = client.responses.stream({
    model: 'gpt-4o',
    input: 'Weather in Paris?',
    tools: [{ type: 'function', name: 'get_weather', parameters: weather, strict: true }],
  });
  let deltas = 0;
  for await (const event of stream) if (event.type === 'response.function_call_arguments.delta') deltas += 1;
  const call = (await stream.finalResponse()).output[0];
  assert.ok(deltas > 1);
  assert.equal(call.type, 'function_call');
  assert.equal(call.name, 'get_weather');
  assert.deepEqual(JSON.parse(call.arguments), { city: 'mock', unit: 'celsius' });
});

test('a streamed chat tool call', async () => {
  const stream = client.chat.completions.stream({
    model: 'gpt-4o',
    messages: [{ role: 'user', content: 'Weather in Paris?' }],
    tools: [{ type: 'function', function: { name: 'get_weather', parameters: weather } }],
  });
  const final = await stream.finalChatCompletion();
  const choice = final.choices[0];
  assert.equal(choice.finish_reason, 'tool_calls');
  assert.equal(choice.message.tool_calls[0].function.name, 'get_weather');
  assert.deepEqual(JSON.parse(choice.message.tool_calls[0].function.arguments), { city: 'mock', unit: 'celsius' });
});

test('an unknown model is a NotFoundError', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'gpt-9', messages: [{ role: 'user', content: 'hi' }] }),
    (e) =>
      e instanceof NotFoundError &&
      e.code === 'model_not_found' &&
      e.error.message === 'The model `gpt-9` does not exist or you do not have access to it.',
  );
});
