-- The catalogue a new shop opens with.
INSERT INTO widgets (slug, name, tagline, description, price_cents, stock, color, shape) VALUES
('sprocket',        'Sprocket',          'The one that started it all.',          'A twelve-tooth steel sprocket, laser cut and deburred by hand. Fits every standard widget chain.', 1250, 120, '#e4572e', 'gear'),
('flux-capacitor',  'Flux Capacitor',    'Makes time travel possible.',           'Three-pronged and gently glowing. Requires 1.21 gigawatts, sold separately.', 8800, 12, '#4c6ef5', 'bolt'),
('thingamajig',     'Thingamajig',       'You will know when you need it.',       'A general-purpose thingamajig in anodised aluminium. Left- and right-handed.', 1999, 75, '#12b886', 'hexagon'),
('whatchamacallit', 'Whatchamacallit',   'Nobody remembers its name. Everybody owns one.', 'Solid brass, satisfying heft, mysterious purpose. A desk classic.', 2450, 40, '#f59f00', 'circle'),
('doohickey',       'Doohickey',         'Small, clever, indispensable.',         'Snaps onto any doodad. Comes in a reusable tin.', 650, 300, '#ae3ec9', 'diamond'),
('gizmo',           'Gizmo',             'Our best-selling gadget.',              'Pocket-sized, with three buttons that each do something delightful.', 3400, 60, '#1c7ed6', 'square'),
('doodad',          'Doodad',            'The doohickey''s best friend.',         'A doodad in recycled polymer. Stackable to any height.', 499, 500, '#f06595', 'triangle'),
('contraption',     'Contraption',       'Over-engineered on purpose.',           'Forty-two moving parts, one happy owner. Assembly instructions included (mostly).', 12900, 8, '#495057', 'gear'),
('gadget-pro',      'Gadget Pro',        'The gadget, now with more gadget.',     'Everything the gizmo does, plus a tiny screen that shows a smiling face.', 5900, 25, '#0ca678', 'star'),
('widget-classic',  'Classic Widget',    'Plain, honest, dependable.',            'The widget your grandparents trusted. Cast iron, lifetime warranty.', 1500, 200, '#d9480f', 'circle'),
('nano-widget',     'Nano Widget',       'The smallest widget we make.',          'Fits on a fingertip; do not sneeze. Sold in a magnifying case.', 2200, 90, '#7048e8', 'hexagon'),
('mega-widget',     'Mega Widget',       'For when a widget is not enough.',      'Two metres of widget. Delivered on a pallet; bring friends.', 45000, 3, '#2b8a3e', 'square');
