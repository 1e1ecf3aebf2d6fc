"""Simulated StarCraft II mini-games (`sc2-sim/<map>`): a stand-in for pysc2's `SC2Env` where the game
cannot be installed. NOT StarCraft II: scores on these maps are simulator scores and are reported as such.

`SimulatedSC2Env` takes SC2Env's constructor arguments and returns pysc2 `TimeStep`s, so envs.sc2's adapter
runs over it unchanged. It is faithful where an agent can tell:
- Observations are real `sc_pb.ResponseObservation` protos (feature-layer images, player_common, the
  selection's ui_data, the abilities the selection has, the score), turned into arrays by pysc2's own
  `features.Features.transform_obs`; the available functions are pysc2's `available_actions` of the proto.
- Every action goes through pysc2's `Features.transform_action` (availability and argument checks are
  pysc2's, an unavailable call raises as it does with the game); the simulator reads the resulting
  `sc_pb.Action` (unit_command, unit_selection_point/rect, action_ui, camera_move) as the game would.
- Reward is the change in the map's curriculum score (pysc2's score_index 0), the first step's is 0; the
  game ending (time up, all marines dead) gives discount 0, `game_steps_per_episode` cuts with discount 1,
  as SC2Env does.

Numbers and their sources (pysc2's docs/mini_games.md for the maps, Liquipedia's Legacy of the Void unit
pages for the units; speeds and cooldowns are given there per second at "Faster", 22.4 game loops/s):
- Episodes: 120 s of game time = 1,920 game loops (the map triggers' clock, 16 loops per game second),
  i.e. 240 agent steps at step_mul 8.
- Marine: 45 hit points, armour 0, 6 damage, range 5, cooldown 0.61 s (13.66 loops), speed 3.15/s
  (0.140625 per loop), radius 0.375, unit type 48. Roach: 145 hit points, armour 1, 16 damage, range 4,
  cooldown 1.43 s (32 loops), speed 3.15/s, radius 0.625, sight 9, unit type 110. Damage dealt is
  max(0.5, damage - armour). Beacon: unit type 317; mineral shard: unit type 1680 (both neutral; the ids
  pysc2 agents read off the real maps).
- MoveToBeacon: 1 marine (unselected) and 1 beacon at random places at least 4 apart; reaching it is +1
  and moves the beacon to a random place at least 5 from the marine. CollectMineralShards: 2 marines
  (unselected), 20 shards at least 2 from the marines, +1 per shard, a new 20 when all are taken.
  DefeatRoaches: 9 marines (preselected) in a vertical line on a random side, 4 roaches in a line on the
  other; +10 per roach, -1 per marine lost; when all 4 roaches are dead, 4 new roaches and 5 new marines
  (full health; survivors keep theirs) and every unit back to opposite sides; ends when all marines die.

Simplifications (what the game does that this does not), written down so that nobody mistakes the two:
- Geometry is ours: a 64 x 64 map, the camera 24 world units wide (square screen) centred on the
  playable area, which is a 22 x 16 rectangle; this size was chosen so that a scripted perfect
  MoveToBeacon player scores about the SC2LE paper's human 28 (see tests/test_sc2_sim.py), not read
  from the map files. Beacon and shard radii (1 each) are estimates; "reaching" is touching
  (centre distance <= the two radii).
- Units move in straight lines (no pathing, no acceleration, no turning time) and are kept inside the
  playable area; a command outside it goes to the nearest point inside. They take room: overlapping
  units are pushed apart by half the overlap each, once a loop (a soft collision; no blocking).
- Combat, as the game's default unit behaviour (there is no other AI on these maps): shots hit instantly
  (no projectile or attack-point delay). Idle units go for the nearest enemy within sight (9) and chase
  it; held units fire at the nearest in weapon range and do not move; attack-moving units (Attack on the
  ground, Patrol) fight the nearest within sight on their way; Attack or Smart on an enemy targets that
  unit and chases it. A unit keeps the enemy it acquired while that lives and stays within reach. A unit
  shot at calls for help: it and its idle allies within its sight go for the shooter. Sight as the
  acquisition range and help radius are our choices; no unit-type target priority, no overkill logic.
- Calibration of DefeatRoaches is still off: the paper's random policy scores 1 in the game and 44.4
  here (100 episodes), a scripted "select the army, attack-move onto the roaches" 36 (the paper's human
  41). Before units took room and roaches answered as a group, random play scored 119.5. Its scores mean
  little beside the game's.
- Selection: select_point/select_rect pick the player's own units only (clicking an enemy or the ground
  clears the selection); a point hits a unit within its radius plus half a pixel. Control groups keep
  their living units. New DefeatRoaches marines join no selection.
- Only the feature layers an agent can use here are drawn (height_map, visibility_map, player_id,
  player_relative, unit_type, selected, unit_hit_points(_ratio), unit_density(_aa), pathable, and on the
  minimap camera too); creep, power, energy, shields, effects, buffs and the like stay 0 (none of these
  maps has them). The minimap's unit_type is 0, as the game's is without cheating layers.
- No replays (.SC2Replay needs the game), no rgb observations, no feature_units/raw units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from envs.sc2_compat import import_pysc2

MAP_SIZE = 64.0
CAMERA_WIDTH = 24.0  # world units across the (square) screen
PLAYABLE_WIDTH, PLAYABLE_HEIGHT = 22.0, 16.0
EPISODE_GAME_LOOPS = 1920  # 120 s of game time at 16 loops per game second

# player_relative: 1 self, 3 neutral, 4 enemy (pysc2's features.PlayerRelative); player_id: 16 = neutral.
SELF, NEUTRAL, ENEMY = 1, 3, 4
PLAYER_ID = {SELF: 1, NEUTRAL: 16, ENEMY: 2}

# Abilities a selected marine offers (ability id, requires a point): Smart, Stop, Move, Patrol,
# HoldPosition, Attack. pysc2 turns them into Smart/Stop/Move/Patrol/HoldPosition/Attack functions.
MARINE_ABILITIES = ((1, True), (4, False), (16, True), (17, True), (18, False), (23, True))
SMART, STOP, MOVE, PATROL, HOLD, ATTACK = 1, 4, 16, 17, 18, 23


@dataclass(frozen=True)
class UnitType:
    type_id: int
    hit_points: float
    radius: float
    speed: float = 0.0  # world units per game loop
    armour: float = 0.0
    damage: float = 0.0
    weapon_range: float = 0.0
    cooldown: float = 0.0  # game loops between shots
    sight: float = 0.0


# 3.15 per second at Faster is 2.25 per game second at Normal, 16 loops: 0.140625 per loop, exactly.
MARINE = UnitType(48, 45.0, 0.375, speed=2.25 / 16, damage=6.0, weapon_range=5.0, cooldown=0.61 * 22.4, sight=9.0)
ROACH = UnitType(110, 145.0, 0.625, speed=2.25 / 16, armour=1.0, damage=16.0, weapon_range=4.0,
                 cooldown=1.43 * 22.4, sight=9.0)  # fmt: skip
BEACON = UnitType(317, 0.0, 1.0)
SHARD = UnitType(1680, 0.0, 1.0)


@dataclass
class Order:
    kind: str  # "move", "attack_move", "attack_unit", "hold"
    point: tuple[float, float] | None = None
    target: Unit | None = None


@dataclass(eq=False)
class Unit:
    kind: UnitType
    alliance: int
    x: float
    y: float
    tag: int
    hp: float = 0.0
    cooldown: float = 0.0
    orders: list[Order] = field(default_factory=list)
    alive: bool = True
    target: Unit | None = None  # the enemy it acquired by itself (idle, held, attack-moving); kept while it can

    def __post_init__(self):
        self.hp = self.hp or self.kind.hit_points


def _distance(a: Unit, x: float, y: float) -> float:
    return math.hypot(a.x - x, a.y - y)


class MiniGame:
    """One map's units, rules and score. Coordinates are world units, y up, like the game's."""

    name = ""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.left, self.right = (MAP_SIZE - PLAYABLE_WIDTH) / 2, (MAP_SIZE + PLAYABLE_WIDTH) / 2
        self.bottom, self.top = (MAP_SIZE - PLAYABLE_HEIGHT) / 2, (MAP_SIZE + PLAYABLE_HEIGHT) / 2
        self.units: list[Unit] = []
        self.score = 0
        self.over = False
        self._next_tag = 1
        self.preselected = False

    def add(self, kind: UnitType, alliance: int, x: float, y: float) -> Unit:
        unit = Unit(kind, alliance, x, y, tag=self._next_tag)
        self._next_tag += 1
        self.units.append(unit)
        return unit

    def random_point(self, margin: float) -> tuple[float, float]:
        return (float(self.rng.uniform(self.left + margin, self.right - margin)),
                float(self.rng.uniform(self.bottom + margin, self.top - margin)))  # fmt: skip

    def random_point_away(self, margin: float, away: list[Unit], distance: float) -> tuple[float, float]:
        while True:
            x, y = self.random_point(margin)
            if all(_distance(u, x, y) >= distance for u in away):
                return x, y

    def clamp(self, x: float, y: float, radius: float) -> tuple[float, float]:
        return (min(max(x, self.left + radius), self.right - radius),
                min(max(y, self.bottom + radius), self.top - radius))  # fmt: skip

    def own(self) -> list[Unit]:
        return [u for u in self.units if u.alliance == SELF and u.alive]

    def enemies_of(self, unit: Unit) -> list[Unit]:
        other = ENEMY if unit.alliance == SELF else SELF
        return [u for u in self.units if u.alliance == other and u.alive]

    # --- one game loop -------------------------------------------------------------------------------
    def loop(self) -> None:
        for unit in self.units:
            if unit.alive and unit.kind.speed:
                self._act(unit)
        self._separate()
        self.after_loop()

    def _separate(self) -> None:
        """Units take room: each overlapping pair of mobile units is pushed apart by half the overlap each,
        along the line between their centres (the game's soft unit collision, in one pass a loop). Without
        it a selected group stands on one point, every unit picks the same target, and focus fire, the
        skill DefeatRoaches asks for, comes free."""
        units = [u for u in self.units if u.alive and u.kind.speed]
        for i, a in enumerate(units):
            for b in units[i + 1 :]:
                dx, dy = b.x - a.x, b.y - a.y
                distance, room = math.hypot(dx, dy), a.kind.radius + b.kind.radius
                if distance >= room:
                    continue
                if distance < 1e-9:  # on one point: a random direction, from the game's seeded stream
                    angle = float(self.rng.uniform(0.0, 2 * math.pi))
                    dx, dy, distance = math.cos(angle), math.sin(angle), 1.0
                    push = room / 2
                else:
                    push = (room - distance) / 2
                dx, dy = dx / distance * push, dy / distance * push
                a.x, a.y = self.clamp(a.x - dx, a.y - dy, a.kind.radius)
                b.x, b.y = self.clamp(b.x + dx, b.y + dy, b.kind.radius)

    def after_loop(self) -> None:
        """The map's triggers, run after the units act in each game loop."""

    def _move_towards(self, unit: Unit, x: float, y: float, stop_at: float = 0.0) -> bool:
        """Move one loop's worth towards (x, y), stopping `stop_at` short; True once there."""
        dx, dy = x - unit.x, y - unit.y
        distance = math.hypot(dx, dy) - stop_at
        if distance <= unit.kind.speed:
            if distance > 0:
                scale = distance / (distance + stop_at)
                unit.x, unit.y = self.clamp(unit.x + dx * scale, unit.y + dy * scale, unit.kind.radius)
            return True
        scale = unit.kind.speed / (distance + stop_at)
        unit.x, unit.y = self.clamp(unit.x + dx * scale, unit.y + dy * scale, unit.kind.radius)
        return False

    def _in_range(self, unit: Unit, target: Unit) -> bool:
        return self._gap(unit, target) <= unit.kind.weapon_range

    def _fire(self, unit: Unit, target: Unit) -> None:
        if unit.cooldown > 0:
            return
        target.hp -= max(0.5, unit.kind.damage - target.kind.armour)
        unit.cooldown = unit.kind.cooldown
        # The game's "call for help": the unit shot at and its idle armed allies within its sight go for
        # the shooter (units with orders keep them).
        for ally in self.units:
            if (ally.alive and ally.alliance == target.alliance and ally.kind.damage and not ally.orders
                    and _distance(ally, target.x, target.y) <= target.kind.sight):  # fmt: skip
                ally.orders.append(Order("attack_unit", target=unit))
        if target.hp <= 0 and target.alive:
            target.alive = False
            self.on_death(target)

    def on_death(self, unit: Unit) -> None:
        """The map's reward for a death."""

    def _gap(self, unit: Unit, other: Unit) -> float:
        return _distance(unit, other.x, other.y) - unit.kind.radius - other.kind.radius

    def _acquire(self, unit: Unit, within: float) -> Unit | None:
        """The enemy a unit fights by itself: the one it has while that lives and stays within `within`
        (edge to edge), else the nearest there (the first of equals). Keeping the target is what spreads a
        group's fire: each unit of a spread-out group stays on whatever was nearest to it."""
        target = unit.target
        if target is not None and target.alive and self._gap(unit, target) <= within:
            return target
        best, best_gap = None, math.inf
        for enemy in self.enemies_of(unit):
            gap = self._gap(unit, enemy)
            if gap <= within and gap < best_gap:
                best, best_gap = enemy, gap
        unit.target = best
        return best

    def _engage(self, unit: Unit, target: Unit, chase: bool) -> None:
        if self._in_range(unit, target):
            self._fire(unit, target)
        elif chase:
            reach = unit.kind.radius + target.kind.radius + unit.kind.weapon_range
            self._move_towards(unit, target.x, target.y, stop_at=reach)

    def _act(self, unit: Unit) -> None:
        unit.cooldown = max(0.0, unit.cooldown - 1)
        order = unit.orders[0] if unit.orders else None
        if order is None or order.kind == "hold":
            # Idle units go for enemies within sight; held ones fire at what is in range and do not move.
            held = order is not None
            within = unit.kind.weapon_range if held else unit.kind.sight
            target = self._acquire(unit, within) if unit.kind.damage else None
            if target is not None:
                self._engage(unit, target, chase=not held)
            return
        if order.kind == "move":
            if self._move_towards(unit, *order.point):
                unit.orders.pop(0)
        elif order.kind == "attack_unit":
            if not order.target.alive:
                unit.orders.pop(0)
            else:
                self._engage(unit, order.target, chase=True)
        elif order.kind == "attack_move":
            target = self._acquire(unit, unit.kind.sight) if unit.kind.damage else None
            if target is not None:
                self._engage(unit, target, chase=True)
            elif self._move_towards(unit, *order.point):
                unit.orders.pop(0)


class MoveToBeacon(MiniGame):
    name = "MoveToBeacon"

    def __init__(self, rng: np.random.Generator):
        super().__init__(rng)
        self.marine = self.add(MARINE, SELF, *self.random_point(MARINE.radius))
        self.beacon = self.add(BEACON, NEUTRAL, *self.random_point_away(BEACON.radius, [self.marine], 4.0))

    def after_loop(self) -> None:
        if _distance(self.marine, self.beacon.x, self.beacon.y) <= MARINE.radius + BEACON.radius:
            self.score += 1
            self.beacon.x, self.beacon.y = self.random_point_away(BEACON.radius, [self.marine], 5.0)


class CollectMineralShards(MiniGame):
    name = "CollectMineralShards"
    shards_per_set = 20

    def __init__(self, rng: np.random.Generator):
        super().__init__(rng)
        for _ in range(2):
            self.add(MARINE, SELF, *self.random_point(MARINE.radius))
        self._spawn_shards()

    def _spawn_shards(self) -> None:
        marines = self.own()
        for _ in range(self.shards_per_set):
            self.add(SHARD, NEUTRAL, *self.random_point_away(SHARD.radius, marines, 2.0))

    def after_loop(self) -> None:
        shards = [u for u in self.units if u.kind is SHARD and u.alive]
        for marine in self.own():
            for shard in shards:
                if shard.alive and _distance(marine, shard.x, shard.y) <= MARINE.radius + SHARD.radius:
                    shard.alive = False
                    self.score += 1
        if all(not s.alive for s in shards):
            self.units = [u for u in self.units if u.alive]
            self._spawn_shards()


class DefeatRoaches(MiniGame):
    name = "DefeatRoaches"

    def __init__(self, rng: np.random.Generator):
        super().__init__(rng)
        self.preselected = True
        marines = [self.add(MARINE, SELF, 0.0, 0.0) for _ in range(9)]
        roaches = [self.add(ROACH, ENEMY, 0.0, 0.0) for _ in range(4)]
        self._line_up(marines, roaches)

    def _line_up(self, marines: list[Unit], roaches: list[Unit]) -> None:
        """Marines in a vertical line on a random side, roaches in one on the other; no orders left."""
        marine_left = bool(self.rng.integers(2))
        for units, left in ((marines, marine_left), (roaches, not marine_left)):
            x = self.left + 2.0 if left else self.right - 2.0
            spacing = min(2 * units[0].kind.radius + 0.25, (PLAYABLE_HEIGHT - 2.0) / len(units))
            y0 = MAP_SIZE / 2 - spacing * (len(units) - 1) / 2
            for i, unit in enumerate(units):
                unit.x, unit.y = x, y0 + i * spacing
                unit.orders.clear()

    def on_death(self, unit: Unit) -> None:
        self.score += 10 if unit.alliance == ENEMY else -1

    def after_loop(self) -> None:
        if not self.own():
            self.over = True
            return
        if not any(u.alive for u in self.units if u.alliance == ENEMY):
            self.units = [u for u in self.units if u.alive]
            for _ in range(5):
                self.add(MARINE, SELF, 0.0, 0.0)
            roaches = [self.add(ROACH, ENEMY, 0.0, 0.0) for _ in range(4)]
            self._line_up(self.own(), roaches)


GAMES = {game.name: game for game in (MoveToBeacon, CollectMineralShards, DefeatRoaches)}
SIM_MAPS = tuple(GAMES)


class SimulatedSC2Env:
    """pysc2's `SC2Env` interface (reset, step, observation_spec, action_spec, close) over a simulated
    mini-game; see the module docstring. One agent, feature layers only."""

    def __init__(
        self, *, map_name: str, agent_interface_format, step_mul: int = 8, game_steps_per_episode: int | None = None,
        random_seed: int | None = None, players=None, visualize: bool = False, realtime: bool = False,
        save_replay_episodes: int = 0, replay_dir: str | None = None,
    ):  # fmt: skip
        if map_name not in GAMES:
            raise ValueError(f"the simulator has no map {map_name!r}; it has {', '.join(SIM_MAPS)}")
        if save_replay_episodes:
            raise ValueError("simulated maps cannot save .SC2Replay files (they need the game)")
        del players, visualize, realtime, replay_dir  # the game's options, meaningless here
        self.sc = import_pysc2()
        self.map_name, self.step_mul = map_name, step_mul
        self.episode_length = game_steps_per_episode or 0
        self._aif = agent_interface_format
        self._features = self.sc.features.Features(agent_interface_format, map_size=self.sc.point.Point(int(MAP_SIZE), int(MAP_SIZE)),
                                                   map_name=map_name)  # fmt: skip
        dims = agent_interface_format.feature_dimensions
        self.screen_size = (int(dims.screen.x), int(dims.screen.y))
        self.minimap_size = (int(dims.minimap.x), int(dims.minimap.y))
        self._rng = np.random.default_rng(random_seed)
        self.game: MiniGame | None = None
        self.game_loop = 0
        self._proto = None
        self._last_score = 0
        self._ended = True

    # --- pysc2's environment.Base ----------------------------------------------------------------------
    def observation_spec(self):
        return (self._features.observation_spec(),)

    def action_spec(self):
        return (self._features.action_spec(),)

    def close(self) -> None:
        self.game = None

    def reseed(self, seed: int) -> None:
        """Start the random stream over (the game cannot; the simulator can, for reproducible resets)."""
        self._rng = np.random.default_rng(seed)

    def reset(self):
        self.game = GAMES[self.map_name](self._rng)
        self.game_loop = 0
        self.camera = (MAP_SIZE / 2, MAP_SIZE / 2)
        self.selection: list[Unit] = self.game.own() if self.game.preselected else []
        self.control_groups: dict[int, list[Unit]] = {}
        self._last_score = 0
        self._ended = False
        return (self._timestep(self.sc.environment.StepType.FIRST, 0.0, 0.0),)

    def step(self, actions):
        if self._ended:
            return self.reset()
        (call,) = actions
        # pysc2's own checks: an unavailable function or a bad argument raises ValueError here.
        action = self._features.transform_action(self._proto.observation, call)
        self._apply(action)
        game = self.game
        for _ in range(self.step_mul):
            game.loop()
            self.game_loop += 1
            if game.over or self.game_loop >= EPISODE_GAME_LOOPS:
                game.over = True
                break
            if self.episode_length and self.game_loop >= self.episode_length:
                break
        self._prune()
        reward = float(game.score - self._last_score)
        self._last_score = game.score
        step_type = self.sc.environment.StepType
        if game.over:
            self._ended = True
            return (self._timestep(step_type.LAST, reward, 0.0),)
        if self.episode_length and self.game_loop >= self.episode_length:
            self._ended = True
            return (self._timestep(step_type.LAST, reward, 1.0),)
        return (self._timestep(step_type.MID, reward, 1.0),)

    def _prune(self) -> None:
        self.selection = [u for u in self.selection if u.alive]
        for key, units in self.control_groups.items():
            self.control_groups[key] = [u for u in units if u.alive]

    def _timestep(self, step_type, reward: float, discount: float):
        self._proto = self._render()
        obs = self._features.transform_obs(self._proto)  # available_actions included, from the abilities
        return self.sc.environment.TimeStep(step_type=step_type, reward=reward, discount=discount, observation=obs)

    # --- coordinates --------------------------------------------------------------------------------------
    def _screen_scale(self) -> float:
        return self.screen_size[0] / CAMERA_WIDTH

    def screen_to_world(self, px: float, py: float) -> tuple[float, float]:
        """The world point at the centre of screen pixel (px, py) (pysc2's x right, y down)."""
        k, (w, h) = self._screen_scale(), self.screen_size
        return self.camera[0] + (px + 0.5 - w / 2) / k, self.camera[1] - (py + 0.5 - h / 2) / k

    def world_to_screen(self, x: float, y: float) -> tuple[float, float]:
        k, (w, h) = self._screen_scale(), self.screen_size
        return (x - self.camera[0]) * k + w / 2, (self.camera[1] - y) * k + h / 2

    def minimap_to_world(self, px: float, py: float) -> tuple[float, float]:
        w, h = self.minimap_size
        return (px + 0.5) * MAP_SIZE / w, MAP_SIZE - (py + 0.5) * MAP_SIZE / h

    # --- actions --------------------------------------------------------------------------------------------
    def _unit_at(self, px: int, py: int) -> Unit | None:
        x, y = self.screen_to_world(px, py)
        slack = 0.5 / self._screen_scale()
        hits = [u for u in self.game.units if u.alive and _distance(u, x, y) <= u.kind.radius + slack]
        return min(hits, key=lambda u: _distance(u, x, y)) if hits else None

    def _on_screen(self, unit: Unit) -> bool:
        px, py = self.world_to_screen(unit.x, unit.y)
        return 0 <= px < self.screen_size[0] and 0 <= py < self.screen_size[1]

    def _select(self, units: list[Unit], add: bool) -> None:
        self.selection = list(dict.fromkeys([*self.selection, *units])) if add else list(units)

    def _apply(self, action) -> None:
        ui, spatial = action.action_ui, action.action_feature_layer
        if spatial.HasField("unit_command"):
            self._command(spatial.unit_command)
        elif spatial.HasField("unit_selection_point"):
            select = spatial.unit_selection_point
            unit = self._unit_at(select.selection_screen_coord.x, select.selection_screen_coord.y)
            own = unit if unit is not None and unit.alliance == SELF else None
            kind = select.type  # 1 select, 2 toggle, 3 all of the type, 4 add all of the type (sc_pb's enum)
            if kind == 2 and own is not None:
                self.selection = [u for u in self.selection if u is not own] if own in self.selection else [*self.selection, own]
            elif kind in (3, 4) and own is not None:
                same = [u for u in self.game.own() if u.kind is own.kind and self._on_screen(u)]
                self._select(same, add=kind == 4)
            elif kind == 1:
                self.selection = [own] if own is not None else []
        elif spatial.HasField("unit_selection_rect"):
            select = spatial.unit_selection_rect
            for rect in select.selection_screen_coord:
                x0, y1 = self.screen_to_world(rect.p0.x - 0.5, rect.p0.y - 0.5)
                x1, y0 = self.screen_to_world(rect.p1.x + 0.5, rect.p1.y + 0.5)
                inside = [u for u in self.game.own() if x0 <= u.x <= x1 and y0 <= u.y <= y1]
                self._select(inside, add=select.selection_add)
        elif spatial.HasField("camera_move"):
            point = spatial.camera_move.center_minimap
            x, y = self.minimap_to_world(point.x, point.y)
            half = CAMERA_WIDTH / 2
            self.camera = (min(max(x, half), MAP_SIZE - half), min(max(y, half), MAP_SIZE - half))
        elif ui.HasField("select_army"):
            self._select(self.game.own(), add=ui.select_army.selection_add)
        elif ui.HasField("control_group"):
            group = ui.control_group
            # sc_pb ControlGroupAction: 1 recall, 2 set, 3 append, 4 set and steal, 5 append and steal
            if group.action == 1:
                self.selection = list(self.control_groups.get(group.control_group_index, []))
            elif group.action in (2, 4):
                self.control_groups[group.control_group_index] = list(self.selection)
            elif group.action in (3, 5):
                old = self.control_groups.get(group.control_group_index, [])
                self.control_groups[group.control_group_index] = list(dict.fromkeys([*old, *self.selection]))
        elif ui.HasField("multi_panel"):
            panel = ui.multi_panel
            if panel.unit_index < len(self.selection):
                unit = self.selection[panel.unit_index]
                # sc_pb MultiPanel: 1 single select, 2 deselect, 3 select all of type, 4 deselect all of type
                if panel.type == 1:
                    self.selection = [unit]
                elif panel.type == 2:
                    self.selection = [u for u in self.selection if u is not unit]
                elif panel.type == 3:
                    self.selection = [u for u in self.selection if u.kind is unit.kind]
                elif panel.type == 4:
                    self.selection = [u for u in self.selection if u.kind is not unit.kind]

    def _command(self, command) -> None:
        if command.HasField("target_screen_coord"):
            point = command.target_screen_coord
            target = self._unit_at(point.x, point.y)
            x, y = self.screen_to_world(point.x, point.y)
        elif command.HasField("target_minimap_coord"):
            point = command.target_minimap_coord
            target, (x, y) = None, self.minimap_to_world(point.x, point.y)
        else:
            target, x, y = None, 0.0, 0.0
        ability = command.ability_id
        enemy = target if target is not None and target.alliance == ENEMY else None
        if ability in (STOP, HOLD):
            order = Order("hold") if ability == HOLD else None
        elif ability == MOVE or (ability == SMART and enemy is None):
            order = Order("move", self.game.clamp(x, y, MARINE.radius))
        elif enemy is not None:  # Attack or Smart on an enemy unit
            order = Order("attack_unit", target=enemy)
        else:  # Attack on the ground, Patrol: attack-move
            order = Order("attack_move", self.game.clamp(x, y, MARINE.radius))
        for unit in self.selection:
            if order is None:
                unit.orders.clear()
            elif command.queue_command and ability not in (STOP, HOLD):
                unit.orders.append(order)
            else:
                unit.orders[:] = [order]

    # --- observations -------------------------------------------------------------------------------------
    def _render(self):
        sc_pb = self.sc.sc_pb
        response = sc_pb.ResponseObservation()
        observation = response.observation
        observation.game_loop = self.game_loop
        own = self.game.own()
        common = observation.player_common
        common.player_id = 1
        common.food_used = common.food_army = common.army_count = len(own)
        common.food_cap = 200
        observation.score.score_type = 1  # the map's curriculum score
        observation.score.score = int(self.game.score)
        if self.selection:
            for ability_id, requires_point in MARINE_ABILITIES:
                observation.abilities.add(ability_id=ability_id, requires_point=requires_point)
            if len(self.selection) == 1:
                self._fill_unit(observation.ui_data.single.unit, self.selection[0])
            else:
                for unit in self.selection:
                    self._fill_unit(observation.ui_data.multi.units.add(), unit)
        self._draw_screen(observation.feature_layer_data.renders)
        self._draw_minimap(observation.feature_layer_data.minimap_renders)
        return response

    @staticmethod
    def _fill_unit(proto, unit: Unit) -> None:
        proto.unit_type = unit.kind.type_id
        proto.player_relative = unit.alliance
        proto.health = max(0, int(math.ceil(unit.hp)))
        proto.build_progress = 1.0

    @staticmethod
    def _store(image, array: np.ndarray, bits: int) -> None:
        image.bits_per_pixel = bits
        image.size.y, image.size.x = array.shape
        image.data = array.astype(np.uint8 if bits == 8 else np.int32).tobytes()

    def _draw_screen(self, renders) -> None:
        w, h = self.screen_size
        k = self._screen_scale()
        layers = {name: np.zeros((h, w), np.int32) for name in (
            "player_relative", "player_id", "unit_type", "selected", "unit_hit_points", "unit_hit_points_ratio",
            "unit_density", "unit_density_aa")}  # fmt: skip
        # Terrain: the playable area is pathable, visible (fog is off on these maps) and flat.
        xs = self.camera[0] + (np.arange(w) + 0.5 - w / 2) / k
        ys = self.camera[1] - (np.arange(h) + 0.5 - h / 2) / k
        inside = ((ys >= self.game.bottom) & (ys <= self.game.top))[:, None] & ((xs >= self.game.left) & (xs <= self.game.right))[None, :]
        selected = set(map(id, self.selection))
        for unit in self.game.units:
            if not unit.alive:
                continue
            cx, cy = self.world_to_screen(unit.x, unit.y)
            r = unit.kind.radius * k
            x0, x1 = max(int(math.floor(cx - r)), 0), min(int(math.ceil(cx + r)), w)
            y0, y1 = max(int(math.floor(cy - r)), 0), min(int(math.ceil(cy + r)), h)
            if x0 >= x1 or y0 >= y1:
                continue
            gx = np.arange(x0, x1) + 0.5 - cx
            gy = np.arange(y0, y1) + 0.5 - cy
            disc = gx[None, :] ** 2 + gy[:, None] ** 2 <= r * r
            if not disc.any():  # smaller than a pixel: the pixel under its centre
                px, py = int(cx), int(cy)
                if not (0 <= px < w and 0 <= py < h):
                    continue
                disc = np.zeros((y1 - y0, x1 - x0), bool)
                disc[min(py - y0, y1 - y0 - 1), min(px - x0, x1 - x0 - 1)] = True
            window = (slice(y0, y1), slice(x0, x1))
            for name, value in (
                ("player_relative", unit.alliance), ("player_id", PLAYER_ID[unit.alliance]),
                ("unit_type", unit.kind.type_id), ("selected", int(id(unit) in selected)),
                ("unit_hit_points", int(math.ceil(unit.hp))),
                ("unit_hit_points_ratio", int(255 * unit.hp / unit.kind.hit_points) if unit.kind.hit_points else 0),
            ):  # fmt: skip
                layers[name][window][disc] = value
            layers["unit_density"][window] += disc
            layers["unit_density_aa"][window] += disc * 16
        layers["unit_density_aa"] = np.minimum(layers["unit_density_aa"], 255)
        layers["visibility_map"] = inside * 2
        layers["pathable"] = inside.astype(np.int32)
        layers["height_map"] = inside * 128
        for name, array in layers.items():
            self._store(getattr(renders, name), array, 32 if name in ("unit_type", "unit_hit_points") else 8)

    def _draw_minimap(self, renders) -> None:
        w, h = self.minimap_size
        layers = {name: np.zeros((h, w), np.int32) for name in ("player_relative", "player_id", "selected", "camera")}
        sx, sy = w / MAP_SIZE, h / MAP_SIZE

        def box(x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
            return (slice(max(int((MAP_SIZE - y1) * sy), 0), min(int(math.ceil((MAP_SIZE - y0) * sy)), h)),
                    slice(max(int(x0 * sx), 0), min(int(math.ceil(x1 * sx)), w)))  # fmt: skip

        game = self.game
        playable = box(game.left, game.right, game.bottom, game.top)
        inside = np.zeros((h, w), np.int32)
        inside[playable] = 1
        half = CAMERA_WIDTH / 2
        layers["camera"][box(self.camera[0] - half, self.camera[0] + half, self.camera[1] - half, self.camera[1] + half)] = 1
        selected = set(map(id, self.selection))
        for unit in game.units:
            if unit.alive:
                px = min(int(unit.x * sx), w - 1)
                py = min(int((MAP_SIZE - unit.y) * sy), h - 1)
                layers["player_relative"][py, px] = unit.alliance
                layers["player_id"][py, px] = PLAYER_ID[unit.alliance]
                layers["selected"][py, px] = max(layers["selected"][py, px], int(id(unit) in selected))
        layers["visibility_map"] = inside * 2
        layers["pathable"] = inside
        layers["height_map"] = inside * 128
        for name, array in layers.items():
            self._store(getattr(renders, name), array, 8)
